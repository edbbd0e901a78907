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
import logging
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from mlembed.data.batching import Collator, bucket_batches
from mlembed.data.checksum import HashedFile
from mlembed.data.manifest import ShardInfo
from mlembed.data.sources import ShardSource

log = logging.getLogger(__name__)


def seeded(*parts: object) -> random.Random:
    """A RNG seeded by a string of ``parts`` (string seeds hash the same in every process, unlike ``hash``)."""
    return random.Random("/".join(str(p) for p in parts))


class ShardError(ValueError):
    """A shard that cannot be read (missing, damaged or truncated tar, a sample without valid JSON, fewer samples
    or other bytes than its manifest recorded), by its URL."""


VERIFY_MODES = ("count", "full")
"""How shards with a manifest are verified as they are read: ``count`` checks the number of samples at the end
of each shard; ``full`` (the default) also checks the SHA-256 the writer recorded (hashing the bytes as they are
parsed, so the file is read once)."""

SKIP_HINT = "pass --data.skip_damaged=true to skip damaged shards (each is reported in the log and in the metrics)"


def read_samples(urls: list[str], checks: dict[str, ShardInfo] | None = None, verify: str = "full",
                 on_damaged: Callable[[str, ShardError], None] | None = None) -> Iterator[dict]:
    """Decoded samples of ``urls`` in order (any location webdataset opens: paths, ``pipe:``, http).

    A tar cut at a block boundary, or with a member header overwritten, reads as a shorter valid tar: only the
    manifest's sample count (checked when the shard ends) tells it from a whole one.

    Args:
        urls: The shards, read one after another.
        checks: URL -> what its manifest recorded; shards without an entry (patterns, old builds) are read
            unverified.
        verify: One of ``VERIFY_MODES``.
        on_damaged: Called with ``(url, error)`` for a damaged shard, after which reading goes on with the next
            one; unset, the error is raised. The samples a damaged shard yielded before the damage showed are
            kept (a count mismatch shows only at its end).

    Raises:
        ShardError: naming the shard and the reason, whatever went wrong reading it (unless ``on_damaged``).
    """
    for url in urls:
        try:
            yield from _read_shard(url, (checks or {}).get(url), verify)
        except ShardError as err:
            if on_damaged is None:
                raise
            on_damaged(url, err)


def _read_shard(url: str, check: ShardInfo | None, verify: str) -> Iterator[dict]:
    found = 0
    hashed: HashedFile | None = None
    try:
        raw = wds.gopen(url, "rb")
        try:
            if verify == "full" and check is not None and check.sha256:
                raw = hashed = HashedFile(raw)
            files = wds.tariterators.tar_file_expander([{"url": url, "stream": raw}])
            for sample in wds.tariterators.group_by_keys(files):
                found += 1
                yield json.loads(sample["json"])
            if hashed is not None:
                hashed.drain()  # the end-of-archive padding that the tar parser leaves unread
        finally:
            raw.close()
    except (tarfile.TarError, EOFError, OSError, KeyError, json.JSONDecodeError) as err:
        reason = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
        raise ShardError(f"damaged shard: {reason} in {url}; {SKIP_HINT}") from err
    if check is not None and found != check.samples:
        raise ShardError(f"damaged shard {url}: its manifest records {check.samples} samples, {found} found; "
                         f"{SKIP_HINT}")
    if hashed is not None and hashed.hexdigest() != check.sha256:
        raise ShardError(f"damaged shard {url}: its SHA-256 {hashed.hexdigest()[:16]}... differs from the "
                         f"manifest's {check.sha256[:16]}...; {SKIP_HINT}")


class ShardReader:
    """Reads a source's shards, verified against its manifest; skips damaged ones when asked, never silently."""

    def __init__(self, verify: str = "full", skip_damaged: bool = False):
        """Args:
            verify: One of ``VERIFY_MODES``.
            skip_damaged: Skip a damaged shard (a warning names it, once) instead of stopping.
        """
        if verify not in VERIFY_MODES:
            raise ValueError(f"--data.verify ({verify!r}) must be one of {', '.join(VERIFY_MODES)}")
        self.verify, self.skip_damaged = verify, skip_damaged
        self.damaged: dict[str, str] = {}
        """URL -> why it was skipped (in this process: each loader worker keeps its own)."""

    def __call__(self, source: ShardSource, urls: list[str] | None = None) -> Iterator[dict]:
        """The samples of ``urls`` (default: all of ``source``'s shards), in order."""
        urls = source.urls if urls is None else urls
        return read_samples(urls, source.checks, self.verify, self._skip if self.skip_damaged else None)

    def _skip(self, url: str, err: ShardError) -> None:
        if url not in self.damaged:
            self.damaged[url] = str(err)
            log.warning("skipping %s (--data.skip_damaged)", str(err).split("; " + SKIP_HINT)[0])


def slot_samples(source: ShardSource, slot: int, slots: int, epoch: int | None, seed: int,
                 reader: ShardReader | None = None) -> Iterator[dict]:
    """One slot's share of one pass over a source.

    With at least ``slots`` shards, a slot owns every ``slots``-th shard of a seeded permutation (fixed for
    the run, so slots never share a sample) and reads its own shards in a new order every ``epoch``; with
    fewer shards, every slot reads all of them and keeps every ``slots``-th sample, so a small source still
    serves all slots (at the cost of reading it once per slot). ``epoch=None`` keeps the stored order.
    """
    reader = reader or ShardReader()
    urls = list(source.urls)
    if len(urls) < slots:
        for i, sample in enumerate(reader(source, urls)):
            if i % slots == slot:
                yield sample
        return
    if epoch is not None:
        seeded(seed, "shards", source.name).shuffle(urls)
    mine = urls[slot::slots]
    if epoch is not None:
        seeded(seed, "shards", source.name, slot, epoch).shuffle(mine)
    yield from reader(source, mine)


def endless_samples(source: ShardSource, slot: int, slots: int, seed: int, shuffle_buffer: int,
                    rng: random.Random, reader: ShardReader | None = None) -> Iterator[dict]:
    """A slot's share of the source, shuffled, repeated forever with a new shard order every epoch.

    The shuffle buffer is drained at the end of every epoch, so a small source is not repeated inside it.
    """
    epoch = 0
    while True:
        count = 0
        samples = slot_samples(source, slot, slots, epoch, seed, reader)
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
    epoch: dict[str, int] | None = None
    """Source name -> its batches per epoch, for a stage counted in epochs: sources are then drawn without
    replacement (each epoch a seeded order of exactly these batches); None: drawn by weight, with replacement."""

    def source_of(self, index: int, seed: int) -> ShardSource:
        """The source of this stage's ``index``-th batch (the same on every rank and worker)."""
        if self.epoch is not None:
            number, position = divmod(index, sum(self.epoch.values()))
            name = self._epoch_order(number, seed)[position]
            return next(source for source in self.sources if source.name == name)
        rng = seeded(seed, "mix", self.stage, index)
        return rng.choices(self.sources, weights=[s.weight for s in self.sources])[0]

    def _epoch_order(self, number: int, seed: int) -> list[str]:
        """The sources of every batch of epoch ``number``, in a seeded order (cached: one epoch at a time)."""
        cached = getattr(self, "_order", None)
        if cached is None or cached[0] != (number, seed):
            order = [name for name in sorted(self.epoch) for _ in range(self.epoch[name])]
            seeded(seed, "epoch-order", self.stage, number).shuffle(order)
            cached = self._order = ((number, seed), order)
        return cached[1]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class TrainStream(IterableDataset):
    """Exactly ``total`` mixed, homogeneous batches per rank, starting at batch ``start``."""

    def __init__(self, plans: list[StagePlan], seed: int = 0, workers: int = 1, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 1000, bucket_batches: int = 16, reader: ShardReader | None = None):
        """Args:
            plans: The stages in order (stages with 0 steps are skipped).
            seed: Seed of everything random.
            workers: Loader workers (virtual workers; must equal the DataLoader's ``num_workers``, 0 counts as 1).
            rank: This process's global rank.
            world: Number of ranks.
            shuffle_buffer: Samples in each source stream's shuffle buffer.
            bucket_batches: Batches per length-bucketing pool (1 turns bucketing off).
            reader: How shards are verified (default: count and checksum; a damaged shard stops the run). With
                ``skip_damaged`` every batch carries ``damaged_shards``: the shards its loader worker skipped.
        """
        self.reader = reader or ShardReader()
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
        samples = endless_samples(source, slot, self.world * self.workers, self.seed, self.shuffle_buffer, rng,
                                  self.reader)
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
            batch = plan.collator(rows, seeded(self.seed, "negatives", plan.stage, index, self.rank))
            if self.reader.skip_damaged:
                batch["damaged_shards"] = sorted(self.reader.damaged)
            yield batch

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
                 seed: int = 0, reader: ShardReader | None = None):
        """Args:
            plans: Stages whose sources are passed over (``steps`` is ignored).
            rank: This process's global rank.
            world: Number of ranks; every rank gets ``samples // world`` samples of each source (the
                last ``samples % world`` are left out), so all ranks yield the same batches.
            bucket_batches: Batches per length-bucketing pool (1: keep the shard order).
            seed: Seed of the bucketing and negative sampling.
            reader: How shards are verified (default: count and checksum; a damaged shard stops the pass).
        """
        self.reader = reader or ShardReader()
        self.plans, self.rank, self.world = plans, rank, world
        self.bucket_batches, self.seed = bucket_batches, seed

    def _rank_samples(self, source: ShardSource) -> Iterator[dict]:
        # Every rank reads the whole source in its stored order and keeps every ``world``-th sample, up to
        # ``samples // world`` of them. Splitting by shard instead would give ranks unequal shares whenever the
        # shards do not divide evenly (3 shards on 2 ranks), and validation, which gathers at every batch,
        # would then hang. These passes are over held-out data, so reading it once per rank is cheap.
        if self.world == 1:
            yield from self.reader(source)
            return
        # Counted as read when a damaged shard may be skipped: the manifest's count would then give the ranks
        # shares that differ by one, and a batch count that differs would hang the per-batch gather.
        known = source.samples is not None and not self.reader.skip_damaged
        total = source.samples if known else sum(1 for _ in self.reader(source))
        share = total // self.world
        for i, sample in enumerate(self.reader(source)):
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
