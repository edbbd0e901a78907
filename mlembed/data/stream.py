"""Deterministic streams of batches: shard splitting, shuffling, source mixing and the two-stage schedule.

Every batch has a global index ``b`` (0 .. total-1). Its stage follows from ``b`` and the stage lengths, its
source from a RNG seeded by ``(seed, stage, b)``: every rank and worker agrees on the source of step ``b``
without talking to the others. Batch ``b`` is built by "virtual worker" ``b % W`` of its rank, from that
(rank, virtual worker) slot's own share of the source's shards, so samples are disjoint across slots and a
batch's content depends only on ``b``, not on which physical worker made it or where a run resumed.

Two kinds of pass:
- ``TrainStream``: infinite per-source streams (shards reshuffled every source epoch), exactly ``total``
  batches on every rank, resumable from any batch index.
- ``EpochStream``: one pass over every sample of every source (validation, evaluation, exactly-once checks);
  with several ranks each source is cut to the same number of samples per rank so batch counts agree.
"""

from __future__ import annotations

import json
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from mlembed.data.batching import Collator, bucket_batches
from mlembed.data.sources import ShardSource


def seeded(*parts: object) -> random.Random:
    """A RNG seeded by a string of ``parts`` (string seeds hash the same in every process, unlike ``hash``)."""
    return random.Random("/".join(str(p) for p in parts))


class ShardError(ValueError):
    """A shard that cannot be read (missing, damaged or truncated tar, a sample without valid JSON), by its URL."""


def read_samples(urls: list[str]) -> Iterator[dict]:
    """Decoded samples of ``urls`` in order (any location webdataset opens: paths, ``pipe:``, http).

    Raises:
        ShardError: naming the shard and the reason, whatever went wrong reading it.
    """
    for url in urls:
        try:
            for sample in wds.tarfile_to_samples()([{"url": url}]):
                yield json.loads(sample["json"])
        except (tarfile.TarError, EOFError, OSError, KeyError, json.JSONDecodeError) as err:
            reason = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
            raise ShardError(f"damaged shard: {reason} in {url}") from err


def slot_samples(source: ShardSource, slot: int, slots: int, epoch: int | None, seed: int) -> Iterator[dict]:
    """One slot's share of one pass over a source.

    With at least ``slots`` shards, a slot owns every ``slots``-th shard of a seeded permutation (fixed for
    the run, so slots never share a sample) and reads its own shards in a new order every ``epoch``; with
    fewer shards, every slot reads all of them and keeps every ``slots``-th sample, so a small source still
    serves all slots (at the cost of reading it once per slot). ``epoch=None`` keeps the stored order.
    """
    urls = list(source.urls)
    if len(urls) < slots:
        for i, sample in enumerate(read_samples(urls)):
            if i % slots == slot:
                yield sample
        return
    if epoch is not None:
        seeded(seed, "shards", source.name).shuffle(urls)
    mine = urls[slot::slots]
    if epoch is not None:
        seeded(seed, "shards", source.name, slot, epoch).shuffle(mine)
    yield from read_samples(mine)


def endless_samples(source: ShardSource, slot: int, slots: int, seed: int, shuffle_buffer: int,
                    rng: random.Random) -> Iterator[dict]:
    """A slot's share of the source, shuffled, repeated forever with a new shard order every epoch.

    The shuffle buffer is drained at the end of every epoch, so a small source is not repeated inside it.
    """
    epoch = 0
    while True:
        count = 0
        samples = slot_samples(source, slot, slots, epoch, seed)
        for sample in wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=rng)(samples):
            count += 1
            yield sample
        if count == 0:
            raise ValueError(f"source {source.name!r} has no samples for loader slot {slot} of {slots}")
        epoch += 1


@dataclass
class StagePlan:
    """What one stage of training draws from."""

    stage: int
    """Stage number (1 or 2), written into its batches."""
    steps: int
    """Batches in this stage."""
    batch_size: int
    """Rows per batch."""
    sources: list[ShardSource]
    """Sources with their mixing weights."""
    collator: Collator
    """Builds batch dicts for this stage (instructions, negatives, tokenizer)."""

    def source_of(self, index: int, seed: int) -> ShardSource:
        """The source of this stage's ``index``-th batch (the same on every rank and worker)."""
        rng = seeded(seed, "mix", self.stage, index)
        return rng.choices(self.sources, weights=[s.weight for s in self.sources])[0]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class TrainStream(IterableDataset):
    """Exactly ``total`` mixed, homogeneous batches per rank, starting at batch ``start``."""

    def __init__(self, plans: list[StagePlan], seed: int = 0, workers: int = 1, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 1000, bucket_batches: int = 16):
        """Args:
            plans: The stages in order (stages with 0 steps are skipped).
            seed: Seed of everything random.
            workers: Loader workers (virtual workers; must equal the DataLoader's ``num_workers``, 0 counts as 1).
            rank: This process's global rank.
            world: Number of ranks.
            shuffle_buffer: Samples in each source stream's shuffle buffer.
            bucket_batches: Batches per length-bucketing pool (1 turns bucketing off).
        """
        self.plans = [p for p in plans if p.steps > 0]
        self.seed, self.workers, self.rank, self.world = seed, max(workers, 1), rank, world
        self.shuffle_buffer, self.bucket_batches = shuffle_buffer, bucket_batches
        self.start = 0

    @property
    def total(self) -> int:
        """Batches of all stages together."""
        return sum(p.steps for p in self.plans)

    def __len__(self) -> int:
        return self.total

    def locate(self, b: int) -> tuple[StagePlan, int]:
        """The stage of global batch ``b`` and the batch's index inside it."""
        for plan in self.plans:
            if b < plan.steps:
                return plan, b
            b -= plan.steps
        raise IndexError(f"batch {b} is past the last stage")

    def _batches(self, plan: StagePlan, source: ShardSource, slot: int) -> Iterator[list[dict]]:
        rng = seeded(self.seed, "stream", plan.stage, source.name, slot, self.world * self.workers)
        samples = endless_samples(source, slot, self.world * self.workers, self.seed, self.shuffle_buffer, rng)
        return bucket_batches(samples, plan.batch_size, self.bucket_batches, rng)

    def iter_slot(self, virtual: int, start: int) -> Iterator[dict]:
        """Batches ``b >= start`` with ``b % workers == virtual``, built by slot ``(rank, virtual)``."""
        slot = self.rank * self.workers + virtual
        streams: dict[tuple[int, str], Iterator[list[dict]]] = {}

        def stream(plan: StagePlan, source: ShardSource) -> Iterator[list[dict]]:
            key = (plan.stage, source.name)
            if key not in streams:
                streams[key] = self._batches(plan, source, slot)
            return streams[key]

        # Resuming: replay (without tokenizing) the batches this slot made before ``start``.
        for b in range(virtual, start, self.workers):
            plan, index = self.locate(b)
            next(stream(plan, plan.source_of(index, self.seed)))
        first = start + (virtual - start) % self.workers
        for b in range(first, self.total, self.workers):
            plan, index = self.locate(b)
            rows = next(stream(plan, plan.source_of(index, self.seed)))
            yield plan.collator(rows, seeded(self.seed, "negatives", plan.stage, index, self.rank))

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        if num_workers != self.workers:
            raise ValueError(
                f"the loader has {num_workers} workers but the stream was built for {self.workers} "
                "(--data.loader.num_workers must match the DataLoader)"
            )
        # The DataLoader hands out batches round-robin from worker 0, so physical worker w yields
        # batches start + w, start + w + W, ...: those of virtual worker (start + w) % W.
        return self.iter_slot((self.start + worker) % self.workers, self.start)


class EpochStream(IterableDataset):
    """One pass over every source of every plan, in order; each batch from one source."""

    def __init__(self, plans: list[StagePlan], rank: int = 0, world: int = 1, bucket_batches: int = 1,
                 seed: int = 0):
        """Args:
            plans: Stages whose sources are passed over (``steps`` is ignored).
            rank: This process's global rank.
            world: Number of ranks; every rank gets ``samples // world`` samples of each source (the
                last ``samples % world`` are left out), so all ranks yield the same batches.
            bucket_batches: Batches per length-bucketing pool (1: keep the shard order).
            seed: Seed of the bucketing and negative sampling.
        """
        self.plans, self.rank, self.world = plans, rank, world
        self.bucket_batches, self.seed = bucket_batches, seed

    def _rank_samples(self, source: ShardSource) -> Iterator[dict]:
        # Every rank reads the whole source in its stored order and keeps every ``world``-th sample, up to
        # ``samples // world`` of them. Splitting by shard instead would give ranks unequal shares whenever the
        # shards do not divide evenly (3 shards on 2 ranks), and validation, which gathers at every batch,
        # would then hang. These passes are over held-out data, so reading it once per rank is cheap.
        if self.world == 1:
            yield from read_samples(source.urls)
            return
        total = source.samples if source.samples is not None else sum(1 for _ in read_samples(source.urls))
        share = total // self.world
        for i, sample in enumerate(read_samples(source.urls)):
            if i >= share * self.world:
                return
            if i % self.world == self.rank:
                yield sample

    def batches(self) -> Iterator[tuple[StagePlan, list[dict]]]:
        """All batches of this rank, before tokenization."""
        for plan in self.plans:
            for source in plan.sources:
                rng = seeded(self.seed, "epoch", plan.stage, source.name)
                for rows in bucket_batches(self._rank_samples(source), plan.batch_size, self.bucket_batches,
                                           rng, drop_last=False):
                    yield plan, rows

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        for j, (plan, rows) in enumerate(self.batches()):
            if j % num_workers == worker:
                yield plan.collator(rows, seeded(self.seed, "negatives", plan.stage, j, self.rank))
