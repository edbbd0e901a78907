"""Writing validated records into webdataset ``.tar`` shards, one source per shard, plus the manifest.

Safety: a shard is written under ``<name>.partial`` and renamed only once closed, the manifest is written
last, and an output directory that already holds files is refused unless ``overwrite`` is set. A crash
therefore never leaves a shard that looks complete, and a directory without ``manifest.json`` is known to be
unfinished. With ``overwrite`` the new shards are built in a staging directory beside the old ones and swapped
in only once complete, so a bad record (or a crash) leaves the earlier shards as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from mlembed.data.manifest import MANIFEST_NAME, Manifest, ShardInfo
from mlembed.data.records import Record, RecordError, has_records, read_records

PARTIAL = ".partial"
"""Suffix of a shard still being written."""
MAX_EXAMPLES = 20
"""Skipped records listed by name in the manifest (the rest are only counted)."""
STAGING = ".staging"
"""Suffix of the directory an ``overwrite`` build is written into before it replaces the output."""


class _SourceWriter:
    """A ``wds.ShardWriter`` for one source that renames each shard when it is closed and records it."""

    def __init__(self, directory: Path, source: str, task: str, shard_size: int, manifest: Manifest):
        self.directory, self.source, self.task, self.manifest = directory, source, task, manifest
        self.counts: dict[str, int] = {}
        pattern = str(directory / f"{source}-%06d.tar{PARTIAL}")
        self.writer = wds.ShardWriter(pattern, maxcount=shard_size, post=self._finish, verbose=0)
        self.index = 0

    def _finish(self, fname: str) -> None:
        final = fname[: -len(PARTIAL)]
        os.replace(fname, final)
        name = Path(final).name
        self.manifest.shards.append(ShardInfo(name, self.source, self.task, self.counts.pop(fname, 0)))

    def write(self, record: Record) -> None:
        if record.task != self.task:
            raise ValueError(f"source {self.source!r} mixes tasks {self.task!r} and {record.task!r}")
        self.writer.write({"__key__": f"{self.index:09d}", "json": record.to_json()})
        self.index += 1
        self.counts[self.writer.fname] = self.counts.get(self.writer.fname, 0) + 1

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Close the open shard without renaming it (the caller deletes it)."""
        stream, self.writer.tarstream = self.writer.tarstream, None
        if stream is not None:
            stream.close()


def prepare_output(output: str | Path, overwrite: bool) -> Path:
    """The directory to write into: ``output`` itself when empty or absent, else a new staging directory.

    A non-empty ``output`` is refused unless ``overwrite``; then nothing in it is touched here: the build goes
    into a staging directory beside it (same filesystem, so ``_swap_in`` can rename it into place).
    """
    directory = Path(output)
    if not (directory.exists() and any(directory.iterdir())):
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    if not overwrite:
        raise FileExistsError(
            f"--output {directory} is not empty; pass --overwrite to replace the shards and manifest in it"
        )
    return Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=STAGING, dir=directory.parent))


def _is_shard_file(path: Path) -> bool:
    """Whether ``path`` is a file of a shard build (what ``overwrite`` replaces)."""
    return path.name == MANIFEST_NAME or path.name.endswith((".tar", ".tar" + PARTIAL))


def _swap_in(staging: Path, output: Path) -> None:
    """Replace ``output`` by the finished ``staging`` directory; ``output``'s other files (not shards) stay.

    Each step is a rename, so at any moment either the old or the new build is complete on disk: ``output``
    is set aside, the new build takes its name, the old directory's other files move over, and only then is
    the old build deleted.
    """
    shutil.copymode(output, staging)  # mkdtemp makes it private; keep the permissions the output had
    old = staging.with_name(staging.name + ".old")
    os.replace(output, old)
    try:
        os.replace(staging, output)
    except BaseException:
        os.replace(old, output)
        raise
    for path in old.iterdir():
        if not _is_shard_file(path):
            os.replace(path, output / path.name)
    shutil.rmtree(old)


def write_records(records: Iterable[Record], output: str | Path, shard_size: int = 10_000,
                  overwrite: bool = False) -> Manifest:
    """Write already validated records (used by the demo builder); see ``write_shards`` for files."""
    return _write(((0, r) for r in records), output, shard_size, overwrite, skip_invalid=False, total=None)


def write_shards(inputs: list[str | Path], output: str | Path, shard_size: int = 10_000,
                 skip_invalid: bool = False, overwrite: bool = False) -> Manifest:
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


def _write(stream, output, shard_size: int, overwrite: bool, skip_invalid: bool, total) -> Manifest:
    directory = prepare_output(output, overwrite)
    if directory == Path(output):  # a new or empty output: nothing earlier to keep
        return _fill(directory, stream, shard_size, skip_invalid, total)
    try:
        manifest = _fill(directory, stream, shard_size, skip_invalid, total)
        _swap_in(directory, Path(output))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # the earlier shards in ``output`` are untouched
        raise
    return manifest


def _fill(directory: Path, stream, shard_size: int, skip_invalid: bool, total) -> Manifest:
    """Write the records of ``stream`` as shards into ``directory``, then its manifest."""
    manifest = Manifest()
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


def _count_invalid(manifest: Manifest, err: RecordError) -> None:
    manifest.invalid += 1
    manifest.invalid_reasons[err.reason] = manifest.invalid_reasons.get(err.reason, 0) + 1
    if len(manifest.invalid_examples) < MAX_EXAMPLES:
        manifest.invalid_examples.append(str(err))


def summary(manifest: Manifest) -> str:
    """A short human-readable summary of a finished build."""
    lines = [f"{len(manifest.shards)} shards, {sum(s.samples for s in manifest.shards)} samples"]
    for source, entry in sorted(manifest.sources().items()):
        lines.append(f"  {source} ({entry['task']}): {entry['samples']} samples in {len(entry['shards'])} shards")
    if manifest.invalid:
        lines.append(f"skipped {manifest.invalid} invalid records: {json.dumps(manifest.invalid_reasons)}")
    return "\n".join(lines)
