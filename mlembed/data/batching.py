"""Turning a source's samples into batches: length bucketing, hard-negative sampling, tokenized collation."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from mlembed.text import DEFAULT_TEMPLATE, TextTokenizer, text_hash

DEFAULT_NEGATIVES = {"retrieval": 7, "clustering": 9, "classification": 1, "sts": 7, "bitext": 7}
"""Hard negatives per query by task, as the reference: 9 for clustering, 1 for classification, and 7 for every
other source (its retrieval list holds the sts and bitext sources too)."""


def sample_length(sample: dict) -> int:
    """Bucketing key: characters of the query plus the positive (cheap, and tracks token counts closely)."""
    return len(sample["query"]) + len(sample["positive"])


def bucket_batches(samples: Iterable[dict], batch_size: int, pool_batches: int, rng: random.Random,
                   drop_last: bool = True) -> Iterator[list[dict]]:
    """Group samples of similar length into batches, never putting one sample twice in a batch.

    Samples are collected into pools of ``batch_size * pool_batches`` (after the shuffle buffer), each pool is
    sorted by length and cut into batches, and the full batches of a pool are emitted in random order so that
    training does not see a short-to-long trend; the partial rest opens the next pool. A pool is also closed
    early when a sample it already holds comes round again (a small source wrapping around), so that copies,
    which have equal lengths, are not sorted into the same batch. ``pool_batches <= 1`` turns sorting off.

    Args:
        samples: Decoded samples (dicts with ``query``, ``positive`` and ideally ``id``), already shuffled.
        batch_size: Rows per batch.
        pool_batches: Batches per sorting pool.
        rng: Source of randomness (ties and batch order), seeded by the caller.
        drop_last: Drop a final partial batch (finite streams only; infinite streams never have one).
    """
    pool = _Pool(batch_size, pool_batches > 1, rng)
    size = batch_size * max(pool_batches, 1)
    for sample in samples:
        if pool.holds(sample):
            yield from pool.cut()
        pool.add(sample)
        if len(pool.rows) >= size:
            yield from pool.cut()
    yield from pool.cut()
    rest = pool.rows + pool.waiting
    if rest and not drop_last:
        yield from (rest[i : i + batch_size] for i in range(0, len(rest), batch_size))


class _Pool:
    """Rows waiting to be sorted and cut, and copies of rows already in it that wait for the next pool."""

    def __init__(self, batch_size: int, sort: bool, rng: random.Random):
        self.batch_size, self.sort, self.rng = batch_size, sort, rng
        self.rows: list[dict] = []
        self.ids: set = set()
        self.waiting: list[dict] = []

    def holds(self, sample: dict) -> bool:
        return sample.get("id") is not None and sample["id"] in self.ids

    def add(self, sample: dict) -> None:
        # A copy of a row still here waits (up to a batch of them; a source with fewer samples than a batch
        # cannot avoid repeats, so then they are let in).
        if self.holds(sample) and len(self.waiting) < self.batch_size:
            self.waiting.append(sample)
            return
        self.rows.append(sample)
        self.ids.add(sample.get("id"))

    def cut(self) -> Iterator[list[dict]]:
        """Emit the full batches; keep the partial rest, then let the waiting copies in."""
        rows = self.rows
        if self.sort:
            keys = [(sample_length(s), self.rng.random()) for s in rows]
            rows = [s for _, s in sorted(zip(keys, rows), key=lambda pair: pair[0])]
        cut = len(rows) - len(rows) % self.batch_size
        full = [rows[i : i + self.batch_size] for i in range(0, cut, self.batch_size)]
        self.rng.shuffle(full)
        self.rows, self.ids, waiting, self.waiting = rows[cut:], {s.get("id") for s in rows[cut:]}, self.waiting, []
        for sample in waiting:
            self.add(sample)
        yield from full


NEGATIVE_DRAWS = ("row", "batch")
"""How a batch's hard negatives are chosen among each row's mined ones: ``row`` (each row draws its own) or
``batch`` (the reference's: one draw of positions for the whole batch, shared by every row; classification
sources take the first)."""


def pick_negatives(rows: list[dict], n: int, rng: random.Random, draw: str = "row") -> list[str]:
    """Choose exactly ``n`` hard negatives for every row (flat, row-major: ``B * n`` texts).

    A row with at least ``n`` negatives gets ``n`` of them without replacement: with ``draw="row"`` each row its
    own random ones; with ``draw="batch"`` the same positions in every row (one random sample of positions per
    batch, as the reference draws them from its 24 mined negatives; the first ``n`` for a classification source).
    (A batch where some row has fewer than ``n`` falls back to per-row draws for the others.)
    A row with fewer keeps all of its own and is padded with the positives of OTHER rows of the same batch (never
    a text equal to its own positive): they come from the same source, so they are plausible negatives, and they
    keep every row at the same N, which the loss needs. Only when the batch offers nothing else are the row's own
    negatives repeated.
    """
    if n == 0:
        return []
    owns = [[t for t in row["negatives"] if t != row["positive"]] for row in rows]
    shared: list[int] | None = None
    if draw == "batch":
        fewest = min(len(own) for own in owns)
        if rows[0]["task"] == "classification":
            shared = list(range(n))
        elif fewest >= n:
            shared = rng.sample(range(fewest), n)
    out: list[str] = []
    for i, row in enumerate(rows):
        own = owns[i]
        if len(own) >= n:
            out.extend([own[j] for j in shared] if shared is not None else rng.sample(own, n))
            continue
        others = [r["positive"] for j, r in enumerate(rows) if j != i and r["positive"] != row["positive"]]
        pool = others or own
        if not pool:
            raise ValueError(
                f"source {row['source']!r}: sample {row['id']!r} has no negatives and its batch offers no other "
                f"positive to pad {n} hard negatives with (lower the task's num_negatives or the batch size)"
            )
        out.extend(own + [rng.choice(pool) for _ in range(n - len(own))])
    return out


@dataclass
class Collator:
    """Builds the batch dict of ``mlembed/batch.py`` from the rows of one source."""

    tokenizer: TextTokenizer
    """Shared tokenizer (pads to the longest text of the batch)."""
    stage: int = 1
    """Stage number written into every batch."""
    instructions: bool = False
    """Prepend each row's instruction to its query."""
    templates: dict[str, str] = field(default_factory=dict)
    """Per-task instruction templates with ``{instruction}`` and ``{query}``; others use DEFAULT_TEMPLATE."""
    num_negatives: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_NEGATIVES))
    """Hard negatives per query, per task."""
    negative_draw: str = "row"
    """One of ``NEGATIVE_DRAWS``."""

    def query_text(self, row: dict) -> str:
        """The query as the model sees it (with the instruction in instruction stages)."""
        if not self.instructions or not row.get("instruction"):
            return row["query"]
        template = self.templates.get(row["task"], DEFAULT_TEMPLATE)
        return template.format(instruction=row["instruction"], query=row["query"])

    def __call__(self, rows: list[dict], rng: random.Random) -> dict:
        """Tokenize ``rows`` (all of one source) into a batch; ``rng`` picks the hard negatives."""
        source, task = rows[0]["source"], rows[0]["task"]
        if any(r["source"] != source for r in rows):
            raise ValueError(f"a batch mixes sources {sorted({r['source'] for r in rows})}")
        n = self.num_negatives.get(task, 0)
        batch = {
            "query": self.tokenizer([self.query_text(r) for r in rows]),
            "positive": self.tokenizer([r["positive"] for r in rows]),
            "num_negatives": n,
            "query_hash": torch.tensor([text_hash(r["query"]) for r in rows], dtype=torch.long),
            "positive_hash": torch.tensor([text_hash(r["positive"]) for r in rows], dtype=torch.long),
            "task": task,
            "source": source,
            "stage": self.stage,
            "ids": [r["id"] for r in rows],
        }
        if n > 0:
            batch["negatives"] = self.tokenizer(pick_negatives(rows, n, rng, self.negative_draw))
        return batch
