"""MRL, Matryoshka Representation Learning: the loss on prefixes of the embedding as well as the whole."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MRL:
    """Settings of the MRL axis (which embedding prefixes get a loss, and their weights); ``bind`` makes its loss."""

    enabled: bool = True
    """Switch the axis on or off; off means the full embedding only (weight 1)."""
    dims: list[int] | None = None
    """Prefix sizes that get a loss; default: 8, 16, 32, ... below the hidden size, plus the hidden size."""
    weights: list[float] | None = None
    """One weight per dim, in the order ``dims`` is written (``dims: [64, 384], weights: [1.0, 0.5]`` gives 64
    the weight 1.0); default 1 / (i * sqrt(hidden / dim)), i counting from the largest dim."""
    min_dim: int = 8
    """Smallest prefix of the default dim set."""

    def __post_init__(self) -> None:
        if self.dims is not None and len(self.dims) == 0:
            raise ValueError("--model.mrl.dims is empty: give at least one dim, or null for the default")
        if self.dims is not None and min(self.dims) < 1:
            raise ValueError(f"--model.mrl.dims {self.dims} must be positive")
        if self.weights is not None:
            if self.dims is None or len(self.weights) != len(self.dims):
                raise ValueError("--model.mrl.weights needs --model.mrl.dims and exactly one weight per dim")
            if len(set(self.dims)) != len(self.dims):
                raise ValueError(f"--model.mrl.dims {self.dims} repeats a dim, so --model.mrl.weights is ambiguous")
            if min(self.weights) < 0:
                raise ValueError(f"--model.mrl.weights {self.weights} must not be negative")

    def resolve(self, hidden: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Dims (largest first) and their weights for an embedding of size ``hidden``."""
        if not self.enabled:
            return (hidden,), (1.0,)
        if self.dims is not None:
            too_wide = [d for d in self.dims if d > hidden]
            if too_wide:
                raise ValueError(f"--model.mrl.dims {too_wide} exceed the backbone's hidden size {hidden}")
            dims = tuple(sorted(set(self.dims), reverse=True))
        else:
            dims = [hidden]
            d = self.min_dim
            while d < hidden:
                dims.append(d)
                d *= 2
            dims = tuple(sorted(set(dims), reverse=True))
        if self.weights is not None:
            weight_of = dict(zip(self.dims, self.weights))  # the user's order, whatever order ``dims`` is in
            return dims, tuple(float(weight_of[d]) for d in dims)
        return dims, reference_weights(dims, hidden)

    def callbacks(self) -> list:
        """None needed: every prefix gets its loss every step."""
        return []

    def bind(self, hidden: int) -> MRLLoss:
        """This axis resolved for an embedding of size ``hidden``: the loss object training calls."""
        dims, weights = self.resolve(hidden)
        return MRLLoss(dims, weights)


@dataclass(frozen=True)
class MRLLoss:
    """The MRL axis of one model: the base loss on each L2-normalised prefix, weighted (``MRL.bind``)."""

    dims: tuple[int, ...]
    """Prefix sizes, largest first."""
    weights: tuple[float, ...]
    """One weight per dim (the reference does not normalise them)."""

    def __call__(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor | None,
        *,
        base: Callable[..., dict[str, torch.Tensor]],
        **context,
    ) -> tuple[torch.Tensor, dict[int, dict[str, torch.Tensor]]]:
        """Weighted sum of ``base`` over the prefixes of ``dims``.

        Args:
            query: [B, H] pooled queries; positive: [B, H]; negatives: [B, N, H] or None.
            base: the base loss, called on each prefix with ``dim=``; returns its named terms (summed here).
            context: passed through to ``base`` (hashes, teacher, in-batch switch).

        Returns:
            The weighted total and the per-dim terms (for logging).
        """
        total = query.new_zeros(())
        per_dim = {}
        for dim, weight in zip(self.dims, self.weights):
            terms = base(
                prefix(query, dim), prefix(positive, dim), None if negatives is None else prefix(negatives, dim),
                dim=dim, **context,
            )
            per_dim[dim] = terms
            total = total + weight * sum(terms.values())
        return total, per_dim

    @staticmethod
    def logged(terms: dict[tuple[int, int], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """What to log of one step, from the base loss's named terms per (layer, dim): each dim's loss
        (``loss/mrl@<dim>``: unweighted, its terms summed, averaged over layers) and each named term
        (``loss/<name>``, averaged over every (layer, dim)), detached."""
        logs = {}
        layers = sorted({layer for layer, _ in terms})
        for dim in sorted({dim for _, dim in terms}):
            values = [sum(terms[(layer, dim)].values()) for layer in layers]
            logs[f"loss/mrl@{dim}"] = torch.stack(values).mean().detach()
        for name in sorted({name for t in terms.values() for name in t}):
            values = [t[name] for t in terms.values() if name in t]
            logs[f"loss/{name}"] = torch.stack(values).mean().detach()
        return logs


def reference_weights(dims: tuple[int, ...], hidden: int) -> tuple[float, ...]:
    """The reference's weights: the i-th dim, largest first (i = 1, 2, ...), gets 1 / (i * sqrt(hidden / dim))."""
    return tuple(1.0 / ((i + 1) * math.sqrt(hidden / d)) for i, d in enumerate(dims))


def prefix(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` features of the last axis, L2-normalised (cosine similarity at that width)."""
    return F.normalize(x[..., :dim], dim=-1)
