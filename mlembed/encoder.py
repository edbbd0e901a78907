"""What evaluation and export need from a trained model: the encoder protocol.

`EmbeddingModule` implements it, and so does `mlembed.load(...)`'s result; evaluation code depends on this
protocol only, so it works for checkpoints, exported directories and test doubles alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class MatryoshkaPoints:
    """The (rank, depth, dim) values a model was trained to serve.

    ``ranks`` is ``(None,)`` when MEL is off (the ordinary embedding matrix is used).
    """

    ranks: tuple[int | None, ...]
    depths: tuple[int, ...]
    dims: tuple[int, ...]


@runtime_checkable
class Encoder(Protocol):
    """A model that embeds texts at any point of its 3D Matryoshka grid."""

    def points(self) -> MatryoshkaPoints:
        """The ranks, depths and dims the model was trained for (the evaluation grid's axes)."""
        ...

    def embed(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depth: int | None = None,
        instruction: str | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Pooled embeddings [N, hidden] at full width, NOT normalised, float32 on CPU.

        ``rank=None`` means full rank, ``depth=None`` the full depth. Callers cut a dim prefix and L2-normalise
        it themselves, so one call serves every dim.
        """
        ...

    def num_parameters(self, *, rank: int | None = None, depth: int | None = None) -> int:
        """Parameters of the deployable model at (rank, depth) (factors at rank k, first ``depth`` layers)."""
        ...


def truncate_normalize(embeddings: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Cut the first ``dim`` features (MRL prefix) and L2-normalise: [N, H] -> [N, dim]."""
    cut = embeddings if dim is None else embeddings[:, :dim]
    return torch.nn.functional.normalize(cut.float(), dim=-1)
