"""Embed a list of texts once per (rank, depth): duplicates are encoded a single time."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlembed.encoder import PointEncoder


def unique_index(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The distinct texts (first-seen order) and, for each input text, its row among them."""
    rows: dict[str, int] = {}
    index = [rows.setdefault(text, len(rows)) for text in texts]
    return list(rows), torch.tensor(index, dtype=torch.long)


def embed_once(
    encoder: PointEncoder,
    texts: Sequence[str],
    *,
    rank: int | None,
    depth: int | None,
    instruction: str | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Full-width, un-normalised embeddings [N, hidden] of ``texts`` (each distinct text encoded once).

    Every dim prefix is cut from this one result later, so a (rank, depth) point costs one encoder pass.
    """
    distinct, index = unique_index(texts)
    vectors = encoder.embed(distinct, rank=rank, depth=depth, instruction=instruction, batch_size=batch_size)
    return vectors.float()[index]  # [N, hidden]
