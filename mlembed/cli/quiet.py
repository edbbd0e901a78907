"""Messages a run would print that no mlembed user can act on, silenced one by one (never all warnings).

Each filter names the message and the module that emits it, so the same text from anywhere else, and every
other warning, still shows. What each one is:

- torch 2.13 deprecated constructing ``LeafSpec``; Lightning 2.6's combined loader still does (a library
  detail of theirs, fixed upstream, nothing for a user to change);
- Lightning warns that an ``IterableDataset`` with ``__len__`` may miscount with several loader workers; mlembed's
  stream gives each rank and worker its own share, and its length is exact for any worker count (tested in
  tests/data), so the note is wrong here, and it showed even with no workers;
- Lightning's "💡 Tip" lines advertise its cloud products (litlogger, litmodels) on every run;
- transformers draws a "Loading weights" bar for every model it reads from disk (the model, the teacher, the
  control arm), which is a fraction of a second; its download bars stay.

The logger that Lightning picks when none is configured is chosen in mlembed.cli.train (a CSV logger, named, so
Lightning does not print that tensorboard is missing), and so are the progress bar and the model summary
(mlembed.callbacks.progress).
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_ADVERT = "💡 Tip:"


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_ADVERT)


def quiet() -> None:
    """Install the filters above (idempotent)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined",
                            module=r"lightning\.pytorch\.utilities\.data")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in log.filters):
            log.addFilter(_NoAdverts())
    from transformers.utils import logging as transformers_logging

    if hasattr(transformers_logging, "set_tqdm_hook"):  # transformers 5; downloads keep their bars
        transformers_logging.set_tqdm_hook(_no_loading_bar)


def _no_loading_bar(factory, args, kwargs):
    if kwargs.get("desc") == "Loading weights":
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)
