"""A DataLoader over a ``TrainStream`` that remembers how many batches it handed out, so a run resumes exactly.

Lightning stores ``state_dict()`` of a stateful train loader in every checkpoint and calls
``load_state_dict()`` on resume; since a batch's content depends only on its index, the count is all the
state there is. Keep ``persistent_workers`` off: workers must restart to pick up the new start index.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader

from mlembed.data.stream import TrainStream


class ResumableLoader(DataLoader):
    """DataLoader with ``state_dict`` / ``load_state_dict`` counting the batches it yielded."""

    def __init__(self, dataset: TrainStream, num_workers: int = 0, **kwargs):
        """Args:
            dataset: The stream (it batches and tokenizes itself, so the loader does not batch).
            num_workers: Worker processes; must equal the stream's ``workers`` (0 counts as 1).
            **kwargs: Other DataLoader arguments (``pin_memory``, ``prefetch_factor``...).
        """
        if max(num_workers, 1) != dataset.workers:
            raise ValueError(f"num_workers={num_workers} but the stream was built for {dataset.workers} workers")
        super().__init__(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False, **kwargs)
        self.yielded = dataset.start

    def __iter__(self) -> Iterator[dict]:
        # Read the start at the first ``next`` (a generator body runs lazily), so a loader iterated, dropped and
        # iterated again by Lightning still starts where the last counted batch left off.
        self.dataset.start = self.yielded
        for batch in super().__iter__():
            self.yielded += 1
            yield batch

    def state_dict(self) -> dict:
        """``{"batches_yielded": n}``: global index of the next batch."""
        return {"batches_yielded": self.yielded}

    def load_state_dict(self, state: dict) -> None:
        """Continue from the batch after the last one counted in ``state``."""
        self.yielded = int(state["batches_yielded"])
        self.dataset.start = self.yielded
