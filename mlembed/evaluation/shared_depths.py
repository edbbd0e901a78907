"""One forward pass for every depth of the grid, when the encoder can return several layers at once.

``PointEncoder.embed`` returns one depth per call, so a grid over depths {1, 2, 4, 6} runs 1 + 2 + 4 + 6 = 13 layers per
text and rank. A model that also offers ``embed_layers`` (below) runs 6: the depth-l model is the first l layers,
so its output is hidden state l of the deeper pass (after the final norm; MLL trains exactly this slice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from mlembed.artifact import PointGrid
from mlembed.encoder import PointEncoder


@runtime_checkable
class LayerEncoder(Protocol):
    """Optional extension of ``mlembed.encoder.PointEncoder``: pooled embeddings of several depths from one pass."""

    def embed_layers(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depths: Sequence[int],
        instruction: str | None = None,
        batch_size: int = 64,
    ) -> dict[int, torch.Tensor]:
        """``{depth: embeddings [N, hidden]}``, each equal to ``embed(texts, rank=rank, depth=depth, ...)``."""
        ...


class SharedDepths:
    """An Encoder that answers ``embed`` at any of ``depths`` from one cached ``embed_layers`` pass.

    The cache holds the texts seen at the current rank (every task's texts x every depth: a few MB for the demo)
    and is emptied when the rank changes, which the grid does only after finishing all depths of a rank.

    Args:
        encoder: a model with ``embed_layers``.
        depths: the depths each pass returns.
    """

    def __init__(self, encoder: LayerEncoder, depths: Sequence[int]) -> None:
        self.encoder, self.depths = encoder, sorted(set(depths))
        self._rank: object = object()  # no rank seen yet
        self._cache: dict[tuple, dict[int, torch.Tensor]] = {}

    def points(self) -> PointGrid:
        return self.encoder.points()

    def num_parameters(self, *, rank: int | None = None, depth: int | None = None) -> int:
        return self.encoder.num_parameters(rank=rank, depth=depth)

    def embed(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depth: int | None = None,
        instruction: str | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Embeddings at (rank, depth), computed for all ``depths`` on the first call with these texts."""
        if depth not in self.depths:
            return self.encoder.embed(texts, rank=rank, depth=depth, instruction=instruction, batch_size=batch_size)
        if rank != self._rank:
            self._rank, self._cache = rank, {}
        key = (tuple(texts), instruction)
        if key not in self._cache:
            self._cache[key] = self.encoder.embed_layers(texts, rank=rank, depths=self.depths,
                                                         instruction=instruction, batch_size=batch_size)
        return self._cache[key][depth]


def share_depths(encoder: PointEncoder, depths: Sequence[int | None]) -> PointEncoder:
    """``SharedDepths(encoder)`` when the encoder has ``embed_layers`` and the grid has several depths."""
    concrete = [d for d in depths if d is not None]
    if isinstance(encoder, LayerEncoder) and len(concrete) > 1:
        return SharedDepths(encoder, concrete)
    return encoder
