"""Bitext mining: is the nearest neighbour (cosine) of a sentence in the other language its translation?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlembed.encoder import PointEncoder, truncate_normalize
from mlembed.evaluation.embedding import embed_once, unique_index
from mlembed.evaluation.task import Scores


@dataclass
class BitextTask:
    """Translation pairs grouped by language; mining accuracy in both directions.

    Metrics: ``accuracy`` (main: mean over languages of the mean of both directions), ``accuracy/src2tgt``,
    ``accuracy/tgt2src`` (means over languages), and per language ``accuracy/<lang>``. Candidates for a
    sentence are the other side's sentences of the same language; a hit is a neighbour whose text equals the
    gold text, so duplicated sentences do not count as misses.

    Args:
        src: source sentence of each pair (English in the demo).
        tgt: its translation.
        langs: language of each pair.
        name: task name in results.
        batch_size: encoder batch size.
    """

    src: Sequence[str]
    tgt: Sequence[str]
    langs: Sequence[str]
    name: str = "bitext"
    batch_size: int = 64
    main_metric: str = "accuracy"
    in_domain: bool = False
    """Whether the texts come from the training data's distribution (held out) rather than from elsewhere."""

    def __post_init__(self) -> None:
        if not len(self.src) == len(self.tgt) == len(self.langs) or not self.src:
            raise ValueError(f"bitext task {self.name}: {len(self.src)} src, {len(self.tgt)} tgt and "
                             f"{len(self.langs)} langs; they must be equally many, and more than 0")

    def languages(self) -> list[str]:
        """The languages, sorted."""
        return sorted(set(self.langs))

    def num_texts(self) -> int:
        return len(unique_index([*self.src, *self.tgt])[0])

    def evaluate(
        self, encoder: PointEncoder, *, rank: int | None, depth: int | None, dims: Sequence[int | None]
    ) -> Scores:
        """Mining accuracy per language and direction, for every dim prefix."""
        n = len(self.src)
        vectors = embed_once(encoder, [*self.src, *self.tgt], rank=rank, depth=depth, batch_size=self.batch_size)
        rows = {lang: torch.tensor([i for i, x in enumerate(self.langs) if x == lang]) for lang in self.languages()}
        out: Scores = {}
        for dim in dims:
            unit = truncate_normalize(vectors, dim)
            per_lang = {
                lang: mining_accuracy(unit[idx], unit[n + idx], [self.src[i] for i in idx],
                                      [self.tgt[i] for i in idx])
                for lang, idx in rows.items()
            }
            out[dim] = summarise(per_lang)
        return out


def mining_accuracy(
    src: torch.Tensor, tgt: torch.Tensor, src_text: Sequence[str], tgt_text: Sequence[str]
) -> tuple[float, float]:
    """Accuracy of nearest-neighbour mining (src -> tgt, tgt -> src) for unit vectors [N, d] of aligned pairs."""
    similarity = src @ tgt.T  # [N src, N tgt]
    _, tgt_id = unique_index(tgt_text)
    _, src_id = unique_index(src_text)
    forward = (tgt_id[similarity.argmax(dim=1)] == tgt_id).float().mean()
    backward = (src_id[similarity.argmax(dim=0)] == src_id).float().mean()
    return float(forward), float(backward)


def summarise(per_lang: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Per-language and averaged metrics from ``{lang: (src2tgt, tgt2src)}``."""
    forward = sum(f for f, _ in per_lang.values()) / len(per_lang)
    backward = sum(b for _, b in per_lang.values()) / len(per_lang)
    metrics = {"accuracy": (forward + backward) / 2, "accuracy/src2tgt": forward, "accuracy/tgt2src": backward}
    metrics.update({f"accuracy/{lang}": (f + b) / 2 for lang, (f, b) in per_lang.items()})
    return metrics
