"""What every evaluation task offers the grid: a name, a main metric, and ``evaluate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from mlembed.encoder import PointEncoder

Scores = dict[int | None, dict[str, float]]
"""``{dim: {metric: value}}`` for one (rank, depth); dim ``None`` is the full width."""


@runtime_checkable
class Task(Protocol):
    """An evaluation set and its metrics (``RetrievalTask``, ``STSTask``, ``BitextTask``)."""

    name: str
    """Short name used in CSV rows and logger keys (``lee``, ``bitext``, ``dialogue``)."""
    main_metric: str
    """The metric that enters a point's ``score`` (``ndcg@10``, ``spearman``, ``accuracy``)."""
    in_domain: bool
    """Whether the texts are held out from the training data's sources (scored apart from the others)."""

    def evaluate(
        self, encoder: PointEncoder, *, rank: int | None, depth: int | None, dims: Sequence[int | None]
    ) -> Scores:
        """Embed once at (rank, depth) and score every dim prefix in ``dims``."""
        ...

    def num_texts(self) -> int:
        """Distinct texts encoded per (rank, depth) (what a grid point costs)."""
        ...
