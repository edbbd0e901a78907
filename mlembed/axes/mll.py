"""MLL, Matryoshka Layer Learning: the contrastive loss on the pooled output of several layers at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

#: The reference's layer set before clipping to the model's depth.
REFERENCE_LAYERS = (1, 2, 4, 8, 16, 24, 32, 40, 48)


@dataclass
class MLL:
    """Settings of the MLL axis (which layers get a loss); ``bind`` makes its loss."""

    enabled: bool = True
    """Switch the axis on or off; off means the last layer only."""
    layers: list[int] | None = None
    """Layers (1-based) that get a loss; default: {1,2,4,8,16,24,32,40,48} below the depth, plus the last."""

    def __post_init__(self) -> None:
        if self.layers is not None:
            if len(self.layers) == 0:
                raise ValueError("--model.mll.layers is empty: give at least one layer, or null for the default")
            if min(self.layers) < 1:
                raise ValueError(f"--model.mll.layers {self.layers}: layers are counted from 1")

    def resolve(self, depth: int) -> tuple[int, ...]:
        """The sorted layer set for a backbone of ``depth`` layers."""
        if not self.enabled:
            return (depth,)
        if self.layers is not None:
            too_deep = [layer for layer in self.layers if layer > depth]
            if too_deep:
                raise ValueError(f"--model.mll.layers {too_deep} exceed the backbone's depth {depth}")
            return tuple(sorted(set(self.layers)))
        return tuple(sorted({layer for layer in REFERENCE_LAYERS if layer < depth} | {depth}))

    def callbacks(self) -> list:
        """None needed: every layer trains every step. A ``LayerSchedule`` callback (optional) changes that."""
        return []

    def bind(self, depth: int) -> MLLLoss:
        """This axis resolved for a backbone of ``depth`` layers: the loss object training calls."""
        return MLLLoss(self.resolve(depth))

    @staticmethod
    def combine(per_layer: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The MLL total: the layer losses averaged over layers (the reference divides by the layer count)."""
        return torch.stack(list(per_layer.values())).sum() / len(per_layer)


@dataclass(frozen=True)
class MLLLoss:
    """The MLL axis of one model: an inner loss (MRL or the base loss) on each of its layers, averaged."""

    layers: tuple[int, ...]
    """The layers that get a loss (1-based, ascending); also the depths the trained model serves."""

    def __call__(
        self,
        embeddings: Mapping[int, tuple[torch.Tensor, ...]],
        inner: Callable[..., torch.Tensor],
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Apply ``inner`` to each layer's embeddings and average.

        Args:
            embeddings: layer -> (query [B, H], positive [B, H], negatives [B, N, H] or None), for this axis's
                layers or a subset of them (a layer schedule may leave some out of a step).
            inner: the wrapped loss, called as ``inner(*embeddings[layer], layer=layer)``.

        Returns:
            The averaged loss and the per-layer losses (for logging).
        """
        foreign = sorted(set(embeddings) - set(self.layers))
        if foreign:
            raise ValueError(f"MLL got embeddings of layers {foreign}, which are not among its layers {self.layers}")
        per_layer = {layer: inner(*embs, layer=layer) for layer, embs in embeddings.items()}
        return MLL.combine(per_layer), per_layer

    @staticmethod
    def logged(per_layer: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What to log of one step: each layer's loss (``loss/mll@<layer>``), detached."""
        return {f"loss/mll@{layer}": value.detach() for layer, value in per_layer.items()}
