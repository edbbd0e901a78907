"""Writing validated records into webdataset ``.tar`` shards, one source per shard, plus the manifest.

Safety: a shard is written under ``<name>.partial`` and renamed only once closed, the manifest is written
last, and an output directory that already holds files is refused unless ``overwrite`` is set. A crash
therefore never leaves a shard that looks complete, and a directory without ``manifest.json`` is known to be
unfinished. With ``overwrite`` the new shards are built in a staging directory beside the old ones and swapped
in only once complete, so a bad record (or a crash) leaves the earlier shards as they were.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import queue
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from mlembed.data.checksum import HashedFile
from mlembed.data.manifest import INSTRUCTION_TEXTS, MANIFEST_NAME, ShardInfo, ShardManifest
from mlembed.data.records import Record, RecordError, has_records, read_records
from mlembed.paths import check_output, replace_directory

PARTIAL = ".partial"
"""Suffix of a shard still being written."""
MAX_EXAMPLES = 20
"""Skipped records listed by name in the manifest (the rest are only counted)."""
STAGING = ".staging"
"""Suffix of the directory an ``overwrite`` build is written into before it replaces the output."""


VAL_DIR = "val"
"""Subdirectory of a shard build that holds its held-out (``--val-fraction``) shards."""


@dataclass(frozen=True)
class Sampling:
    """Which rows of each source are written, and which are held out: the authors' data preparation.

    Each source is cut to a seeded random sample of at most ``max_per_source`` rows, then a seeded
    ``val_fraction`` of those (at least one row, and never all) goes to validation shards under ``val/``. Both
    draws are seeded by ``seed`` and the source's name, so two builds with the same settings write the same
    rows, and a source's sample does not depend on which other sources are in the build. Rows left out of the
    sample are not read further (a bad one among them neither stops the build nor counts as invalid).
    """

    max_per_source: int | None = None
    """Rows kept per source (None: all)."""
    seed: int = 42
    """Seed of both draws."""
    val_fraction: float = 0.0
    """Share of each source's kept rows held out for validation (0: none)."""

    def __post_init__(self) -> None:
        if self.max_per_source is not None and self.max_per_source < 1:
            raise ValueError(f"--max-per-source ({self.max_per_source}) must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val-fraction ({self.val_fraction}) must be in [0, 1)")

    @property
    def active(self) -> bool:
        """Whether any row is left out or held out."""
        return self.max_per_source is not None or self.val_fraction > 0

    def splits(self, source: str, rows: int) -> Callable[[int], str | None]:
        """``split(row)`` for the 1-based rows of a source of ``rows`` rows: ``train``, ``val`` or None (left out)."""
        everything = range(1, rows + 1)
        kept = None
        if self.max_per_source is not None and rows > self.max_per_source:
            kept = set(random.Random(f"{self.seed}/{source}/sample").sample(everything, self.max_per_source))
        count = rows if kept is None else len(kept)
        held: set[int] = set()
        if self.val_fraction > 0 and count > 1:
            n = min(max(1, math.ceil(count * self.val_fraction)), count - 1)
            held = set(random.Random(f"{self.seed}/{source}/val").sample(
                everything if kept is None else sorted(kept), n))

        def split(row: int) -> str | None:
            if kept is not None and row not in kept:
                return None
            return "val" if row in held else "train"

        return split


class _SourceWriter:
    """A ``wds.ShardWriter`` for one source that renames each shard when it is closed and records it."""

    def __init__(self, directory: Path, source: str, task: str, shard_size: int, manifest: ShardManifest,
                 split: str = "train"):
        self.source, self.task, self.manifest, self.split = source, task, manifest, split
        self.subdir = "" if split == "train" else VAL_DIR
        directory = directory / self.subdir
        directory.mkdir(exist_ok=True)
        self.directory = directory
        self.counts: dict[str, int] = {}
        self.instructions: dict[str, int] = {}
        self.instruction_texts: dict[str, dict[str, int]] = {}
        self.languages: dict[str, dict[str, int]] = {}
        # Imported here: webdataset imports torch (~250 MB, seconds), which a parent that only hands sources to
        # worker processes never needs.
        import webdataset as wds

        self.files: dict[str, HashedFile] = {}
        pattern = str(directory / f"{source}-%06d.tar{PARTIAL}")
        # A fixed member time: the same records give the same bytes, so the same checksums, on every run.
        self.writer = wds.ShardWriter(pattern, maxcount=shard_size, post=self._finish, verbose=0, opener=self._open,
                                      mtime=0.0)
        self.index = 0

    def _open(self, fname: str) -> HashedFile:
        # The checksum is taken on the bytes as they go to disk: a shard is never read back to hash it.
        file = self.files[fname] = HashedFile(open(fname, "wb"))  # noqa: SIM115 (closed in _finish / abort)
        return file

    def _finish(self, fname: str) -> None:
        file = self.files.pop(fname)
        file.close()  # the tar writer does not close a file it did not open
        final = fname[: -len(PARTIAL)]
        os.replace(fname, final)
        name = f"{self.subdir}/{Path(final).name}" if self.subdir else Path(final).name
        self.manifest.shards.append(
            ShardInfo(name, self.source, self.task, self.counts.pop(fname, 0), self.instructions.pop(fname, 0),
                      self.split, file.hexdigest(), self.instruction_texts.pop(fname, None),
                      self.languages.pop(fname, None)))

    def write(self, record: Record) -> None:
        if record.task != self.task:
            raise ValueError(f"source {self.source!r} mixes tasks {self.task!r} and {record.task!r}")
        self.writer.write({"__key__": f"{self.index:09d}", "json": record.to_json()})
        self.index += 1
        self.counts[self.writer.fname] = self.counts.get(self.writer.fname, 0) + 1
        fname = self.writer.fname
        if record.instruction:
            self.instructions[fname] = self.instructions.get(fname, 0) + 1
            texts = self.instruction_texts.setdefault(fname, {})
            if record.instruction in texts or len(texts) < INSTRUCTION_TEXTS:
                texts[record.instruction] = texts.get(record.instruction, 0) + 1
        for tag in record.languages:
            counts = self.languages.setdefault(fname, {})
            counts[tag] = counts.get(tag, 0) + 1

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Close the open shard without renaming it (the caller deletes it)."""
        stream, self.writer.tarstream = self.writer.tarstream, None
        if stream is not None:
            stream.close()
        for file in self.files.values():
            file.close()
        self.files.clear()


def prepare_output(output: str | Path, overwrite: bool) -> Path:
    """The directory to write into: ``output`` itself when empty or absent, else a new staging directory.

    A non-empty ``output`` is refused unless ``overwrite``; then nothing in it is touched here: the build goes
    into a staging directory beside it (same filesystem, so ``_swap_in`` can rename it into place).
    """
    directory = Path(output)
    check_output(directory, "--output", overwrite, owned=_is_shard_build, what="shards and manifest")
    if not (directory.exists() and any(directory.iterdir())):
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    return Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=STAGING, dir=directory.parent))


def _is_shard_build(directory: Path) -> bool:
    """Whether ``directory`` holds a shard build: a finished one (its manifest), or shards only (an unfinished one)."""
    return (directory / MANIFEST_NAME).is_file() or all(_is_shard_file(path) for path in directory.iterdir())


def _is_shard_file(path: Path) -> bool:
    """Whether ``path`` is a file of a shard build (what ``overwrite`` replaces): held-out shards' folder too."""
    return path.name in (MANIFEST_NAME, VAL_DIR) or path.name.endswith((".tar", ".tar" + PARTIAL))


def _swap_in(staging: Path, output: Path) -> None:
    """Replace ``output`` by the finished ``staging`` build; ``output``'s other files (not shards) stay."""
    shutil.copymode(output, staging)  # mkdtemp makes it private; keep the permissions the output had
    replace_directory(staging, output, keep=lambda path: not _is_shard_file(path))


def write_records(records: Iterable[Record], output: str | Path, shard_size: int = 10_000,
                  overwrite: bool = False) -> ShardManifest:
    """Write already validated records (used by the demo builder); see ``write_shards`` for files."""
    return _write(((0, r) for r in records), output, shard_size, overwrite, skip_invalid=False, total=None)


def write_shards(inputs: list[str | Path], output: str | Path, shard_size: int = 10_000,
                 skip_invalid: bool = False, overwrite: bool = False) -> ShardManifest:
    """Turn JSONL / parquet files into shards in ``output`` and write its manifest.

    Args:
        inputs: Input files (``.jsonl`` or ``.parquet``).
        output: Output directory (must be empty or absent unless ``overwrite``).
        shard_size: Samples per shard.
        skip_invalid: Skip (and count) bad records instead of raising.
        overwrite: Replace the shards and manifest of a previous run.

    Raises:
        RecordError: the first bad record, when ``skip_invalid`` is off.
        FileNotFoundError: an input file is missing.
        ValueError: an input holds no records (empty, or only blank lines); all such inputs are named, and
            nothing is written, since a manifest of 0 samples would look like a finished build.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size ({shard_size}) must be at least 1")
    empty = [path for path in inputs if not has_records(path)]
    if empty:
        raise ValueError("\n".join(f"--input {path}: no records (the file is empty or holds only blank lines)"
                                    for path in empty))
    stream = ((line, item) for path in inputs for line, item in read_records(path))
    return _write(stream, output, shard_size, overwrite, skip_invalid, total=None)


def _write(stream, output, shard_size: int, overwrite: bool, skip_invalid: bool, total) -> ShardManifest:
    return _build(output, overwrite, lambda directory: _fill(directory, stream, shard_size, skip_invalid, total))


def _build(output, overwrite: bool, fill: Callable[[Path], ShardManifest]) -> ShardManifest:
    """Run ``fill`` (shards, then the manifest) into ``output``, or into a staging directory swapped in after."""
    directory = prepare_output(output, overwrite)
    if directory == Path(output):  # a new or empty output: nothing earlier to keep
        manifest = fill(directory)
        if not manifest.shards and manifest.invalid:
            for item in directory.iterdir():  # only what this build wrote (the manifest)
                shutil.rmtree(item) if item.is_dir() else item.unlink()
            _refuse_empty(manifest)
        return manifest
    try:
        manifest = fill(directory)
        if not manifest.shards and manifest.invalid:
            _refuse_empty(manifest)  # before the swap: the earlier shards stay
        _swap_in(directory, Path(output))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # the earlier shards in ``output`` are untouched
        raise
    return manifest


def _refuse_empty(manifest: ShardManifest) -> None:
    examples = "".join(f"\n  {example}" for example in manifest.invalid_examples)
    raise ValueError(f"every record was invalid ({manifest.invalid} skipped by --skip-invalid: "
                     f"{json.dumps(manifest.invalid_reasons)}); no shards written. First ones:{examples}")


def _fill(directory: Path, stream, shard_size: int, skip_invalid: bool, total) -> ShardManifest:
    """Write the records of ``stream`` as shards into ``directory``, then its manifest."""
    manifest = ShardManifest()
    writers: dict[str, _SourceWriter] = {}
    try:
        for _, item in tqdm(stream, desc="writing shards", unit=" rec", total=total, disable=None):
            if isinstance(item, RecordError):
                if not skip_invalid:
                    raise item
                _count_invalid(manifest, item)
                continue
            writer = writers.get(item.source)
            if writer is None:
                writer = writers[item.source] = _SourceWriter(directory, item.source, item.task, shard_size, manifest)
            writer.write(item)
        for writer in writers.values():
            writer.close()
    except BaseException:
        # A half-written shard must not survive under any name a reader would pick up.
        for writer in writers.values():
            writer.abort()
        for path in directory.glob(f"*{PARTIAL}"):
            path.unlink(missing_ok=True)
        raise
    manifest.shards.sort(key=lambda s: s.path)
    manifest.save(directory)
    return manifest


class SourceJob(Protocol):
    """All the records of one source, to be written by ``write_sources`` (picklable, for worker processes)."""

    source: str
    """The source's name (every record it yields has this source)."""
    task: str
    """The source's task (every record it yields has this task)."""

    @property
    def rows(self) -> int:
        """How many records (valid or not) ``records`` yields: the progress bar's total."""

    def records(self) -> Iterator[tuple[int, Record | RecordError]]:
        """``(line, record)`` for every row; bad ones as ``RecordError`` (like ``read_records``)."""


def write_sources(jobs: Sequence[SourceJob], output: str | Path, shard_size: int = 10_000,
                  skip_invalid: bool = False, overwrite: bool = False, workers: int = 1,
                  sampling: Sampling | None = None) -> ShardManifest:
    """Write every job's source into its own shards in ``output``, ``workers`` sources at a time, then the manifest.

    Each job is written by one process (with ``workers > 1``, a pool of fresh ``spawn`` processes), into the same
    directory under the job's own shard names; the parent merges their manifests, so the shards and manifest do
    not depend on ``workers``. The output guarantees are those of ``write_shards``: a shard is renamed only once
    complete, the manifest is written last, and with ``overwrite`` the build is staged and swapped in only once
    every source succeeded. The first failing source stops the others (their unfinished shards are deleted).
    ``sampling`` cuts each source to a seeded sample and holds a seeded share out (validation shards under
    ``val/``, marked ``split: val`` in the manifest, which records the settings).

    Raises:
        RecordError: the first bad record of a failing source, when ``skip_invalid`` is off.
        ValueError: bad ``shard_size`` / ``workers``, or two jobs of the same source.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size ({shard_size}) must be at least 1")
    if workers < 1:
        raise ValueError(f"--workers ({workers}) must be at least 1")
    seen: set[str] = set()
    for job in jobs:
        if job.source in seen:
            raise ValueError(f"source {job.source!r} is given twice (each source is written by one job)")
        seen.add(job.source)
    return _build(output, overwrite, lambda directory: _fill_sources(directory, list(jobs), shard_size,
                                                                     skip_invalid, workers, sampling))


PROGRESS_EVERY = 1024
"""Records between two progress-bar updates of a source writer."""


def _fill_sources(directory: Path, jobs: list[SourceJob], shard_size: int, skip_invalid: bool,
                  workers: int, sampling: Sampling | None = None) -> ShardManifest:
    with tqdm(total=sum(job.rows for job in jobs), desc="writing shards", unit=" rec", disable=None) as bar:
        if workers == 1 or len(jobs) <= 1:
            parts = [_write_source(directory, job, shard_size, skip_invalid, bar.update, sampling) for job in jobs]
        else:
            parts = _write_in_pool(directory, jobs, shard_size, skip_invalid, min(workers, len(jobs)), bar,
                                   sampling)
    manifest = ShardManifest(sampling=asdict(sampling) if sampling is not None and sampling.active else None)
    for part in parts:  # in job order, so the manifest does not depend on which worker finished first
        manifest.shards.extend(part.shards)
        manifest.invalid += part.invalid
        for reason, count in part.invalid_reasons.items():
            manifest.invalid_reasons[reason] = manifest.invalid_reasons.get(reason, 0) + count
        manifest.invalid_examples.extend(part.invalid_examples)
    del manifest.invalid_examples[MAX_EXAMPLES:]
    manifest.shards.sort(key=lambda s: s.path)
    manifest.save(directory)
    return manifest


def _write_source(directory: Path, job: SourceJob, shard_size: int, skip_invalid: bool,
                  progress: Callable[[int], object], sampling: Sampling | None = None) -> ShardManifest:
    """Write one source's shards into ``directory`` (held-out ones under ``val/``); return its part of the
    manifest (not saved)."""
    manifest = ShardManifest()
    writers: dict[str, _SourceWriter] = {}
    split_of = sampling.splits(job.source, job.rows) if sampling is not None and sampling.active else None
    done = 0
    try:
        for row, item in job.records():
            done += 1
            if done == PROGRESS_EVERY:
                progress(done)
                done = 0
            split = "train" if split_of is None else split_of(row)
            if split is None:  # left out of the source's sample
                continue
            if isinstance(item, RecordError):
                if not skip_invalid:
                    raise item
                _count_invalid(manifest, item)
                continue
            writer = writers.get(split)
            if writer is None:  # created on the first good record: a source of only bad ones writes no shard
                writer = writers[split] = _SourceWriter(directory, job.source, job.task, shard_size, manifest, split)
            writer.write(item)
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        # Only this source's unfinished shards: other workers may be writing theirs into the same directory.
        own = re.compile(re.escape(job.source) + r"-\d+\.tar" + re.escape(PARTIAL))
        for folder in (directory, directory / VAL_DIR):
            for path in folder.glob(f"{job.source}-*{PARTIAL}"):
                if own.fullmatch(path.name):
                    path.unlink(missing_ok=True)
        raise
    progress(done)
    manifest.shards.sort(key=lambda s: s.path)
    return manifest


class WorkerDied(RuntimeError):
    """A shard-writing worker process ended without a result (killed, or out of memory)."""


class _ParentGone(RuntimeError):
    """In a pool worker: the process that started it was killed."""


_worker_state: dict = {}
"""In a pool worker: its progress queue, the stop event, the pid of the process that started it, and whether a
job is running."""


def _init_worker(progress, stop, parent_pid: int) -> None:
    _worker_state.update(progress=progress, stop=stop, parent=parent_pid, busy=False)
    threading.Thread(target=_watch_parent, daemon=True).start()


def _watch_parent() -> None:
    """End an idle worker whose parent was killed (it would wait for work forever); a busy one ends itself at its
    next progress report, once it has deleted its unfinished shard."""
    while True:
        time.sleep(0.2)
        if os.getppid() != _worker_state["parent"] and not _worker_state["busy"]:
            os._exit(1)


def _report(count: int) -> None:
    """A worker's progress report, and where it notices that it should stop (before the next records)."""
    if os.getppid() != _worker_state["parent"]:
        # The parent was killed (SIGKILL runs no cleanup): stop rather than finish shards of an abandoned build.
        raise _ParentGone(f"the shard writer (pid {_worker_state['parent']}) that started this worker is gone")
    if _worker_state["stop"].is_set():
        raise RuntimeError("stopped: another source of the build failed")
    _worker_state["progress"].put(count)


def _run_job(directory: Path, job: SourceJob, shard_size: int, skip_invalid: bool,
             sampling: Sampling | None) -> ShardManifest:
    _worker_state["busy"] = True
    try:
        return _write_source(directory, job, shard_size, skip_invalid, _report, sampling)
    except _ParentGone:
        os._exit(1)  # its unfinished shard is deleted; nobody waits for a result
    finally:
        _worker_state["busy"] = False


def _write_in_pool(directory: Path, jobs: list[SourceJob], shard_size: int, skip_invalid: bool, workers: int,
                   bar, sampling: Sampling | None = None) -> list[ShardManifest]:
    """``_write_source`` of every job in a pool of ``workers`` processes; the parts in job order.

    ``spawn`` rather than ``fork``: the parent may hold pyarrow's threads, which a fork copies in whatever state
    they are in. The largest sources start first, so that one big source does not start last. When a source
    fails, the others stop at their next progress report (deleting their unfinished shard) and the rest are not
    started; a worker that dies (SIGKILL, out of memory) breaks the pool, whose other workers are then killed.
    """
    context = multiprocessing.get_context("spawn")
    progress, stop = context.Queue(), context.Event()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(progress, stop, os.getpid()))
    futures: dict = {}
    try:
        for i in sorted(range(len(jobs)), key=lambda i: -jobs[i].rows):
            futures[pool.submit(_run_job, directory, jobs[i], shard_size, skip_invalid, sampling)] = i
        waiting = set(futures)
        while waiting:
            _drain(progress, bar, timeout=0.1)
            done, waiting = wait(waiting, timeout=0, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # re-raises a worker's error, which stops the others below
        bar.update(bar.total - bar.n)  # every row is written; reports still in the queue would only add up to it
        parts = {futures[future]: future.result() for future in futures}
        return [parts[i] for i in range(len(jobs))]
    except BrokenProcessPool as err:
        raise WorkerDied("a shard-writing worker process died (killed, or out of memory?); nothing was finished: "
                         "rerun with --overwrite") from err
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        if not all(f.done() and not f.cancelled() and f.exception() is None for f in futures):
            for path in directory.glob(f"**/*{PARTIAL}"):  # what killed workers left
                path.unlink(missing_ok=True)
        progress.close()


def _drain(progress, bar, timeout: float) -> None:
    """Move the workers' progress reports onto the bar (waiting up to ``timeout`` for the first one)."""
    try:
        bar.update(progress.get(timeout=timeout))
        while True:
            bar.update(progress.get_nowait())
    except queue.Empty:
        pass


def _count_invalid(manifest: ShardManifest, err: RecordError) -> None:
    manifest.invalid += 1
    manifest.invalid_reasons[err.reason] = manifest.invalid_reasons.get(err.reason, 0) + 1
    if len(manifest.invalid_examples) < MAX_EXAMPLES:
        manifest.invalid_examples.append(str(err))


def summary(manifest: ShardManifest) -> str:
    """A short human-readable summary of a finished build."""
    lines = [f"{len(manifest.shards)} shards, {sum(s.samples for s in manifest.shards)} samples"]
    held = manifest.sources("val")
    for source, entry in sorted(manifest.sources().items()):
        out = held.get(source, {}).get("samples")
        lines.append(f"  {source} ({entry['task']}): {entry['samples']} samples in {len(entry['shards'])} shards"
                     + (f", {out} held out for validation" if out else ""))
    if manifest.sampling:
        lines.append("sampling: " + ", ".join(f"{key}={value}" for key, value in manifest.sampling.items()))
    if manifest.invalid:
        lines.append(f"skipped {manifest.invalid} invalid records: {json.dumps(manifest.invalid_reasons)}")
    return "\n".join(lines)
