"""Semantic textual similarity: rank correlation between cosine similarity and human scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

from mlembed.encoder import PointEncoder, truncate_normalize
from mlembed.evaluation.embedding import embed_once, unique_index
from mlembed.evaluation.task import Scores


@dataclass
class STSTask:
    """Pairs of texts with gold similarity scores; metrics ``spearman`` (main) and ``pearson``.

    Args:
        text1: first text of each pair.
        text2: second text of each pair.
        scores: gold similarity of each pair (any scale; only order matters for Spearman).
        name: task name in results.
        batch_size: encoder batch size.
    """

    text1: Sequence[str]
    text2: Sequence[str]
    scores: Sequence[float]
    name: str = "sts"
    batch_size: int = 64
    main_metric: str = "spearman"
    in_domain: bool = False
    """Whether the texts come from the training data's distribution (held out) rather than from elsewhere."""

    def __post_init__(self) -> None:
        if not len(self.text1) == len(self.text2) == len(self.scores):
            raise ValueError(f"STS task {self.name}: {len(self.text1)} text1, {len(self.text2)} text2 and "
                             f"{len(self.scores)} scores; they must be equally many")
        if len(self.scores) < 2:
            raise ValueError(f"STS task {self.name}: needs at least 2 pairs for a correlation")

    def num_texts(self) -> int:
        return len(unique_index([*self.text1, *self.text2])[0])

    def evaluate(
        self, encoder: PointEncoder, *, rank: int | None, depth: int | None, dims: Sequence[int | None]
    ) -> Scores:
        """Spearman and Pearson correlation of cosine similarity with the gold scores, per dim prefix."""
        n = len(self.text1)
        vectors = embed_once(encoder, [*self.text1, *self.text2], rank=rank, depth=depth,
                             batch_size=self.batch_size)
        gold = torch.as_tensor(self.scores, dtype=torch.float32)
        out: Scores = {}
        for dim in dims:
            unit = truncate_normalize(vectors, dim)
            out[dim] = sts_metrics((unit[:n] * unit[n:]).sum(-1), gold)
        return out


def sts_metrics(similarity: torch.Tensor, gold: torch.Tensor) -> dict[str, float]:
    """``{"spearman", "pearson"}`` between predicted similarities [N] and gold scores [N]."""
    return {
        "spearman": float(spearman_corrcoef(similarity, gold)),
        "pearson": float(pearson_corrcoef(similarity, gold)),
    }
