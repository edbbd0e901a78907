"""One training record: its fields, their validation, and reading records from JSONL or parquet files.

A record is ``{id?, query, positive, negatives: [...], instruction?, source, task, languages?}``. Every error names the
file and line (parquet: the 1-based row) so a bad record in a 10 GB file can be found and fixed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlembed.batch import TASKS

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
"""Source names become shard file names, so they may not hold slashes, spaces or other odd characters."""
LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
"""A language tag: an ISO 639 code, optionally with BCP 47 subtags (``en``, ``pt-BR``, ``zh_Hans``)."""
NOT_UTF8 = re.compile("[\udc80-\udcff]")
"""A byte that is not UTF-8, as ``errors="surrogateescape"`` decodes it."""


class RecordError(ValueError):
    """A record that cannot be used, with the file and line it came from."""

    def __init__(self, file: str, line: int, reason: str):
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason

    def __reduce__(self):
        # Pickled by its own arguments (an exception pickles as ``cls(*args)``, and args is only the message),
        # so that one raised in a shard-writing worker process reaches the parent whole.
        return (RecordError, (self.file, self.line, self.reason))


@dataclass
class Record:
    """A validated training sample (the unit written to shards and read back by the loader)."""

    id: str
    """Unique sample id (defaults to ``<file name>:<line>`` when the input has none)."""
    query: str
    """The query text, without any instruction."""
    positive: str
    """The matching document."""
    source: str
    """Source dataset name; every batch comes from one source."""
    task: str
    """One of ``mlembed.batch.TASKS``."""
    negatives: list[str] = field(default_factory=list)
    """Mined hard negatives (may be empty)."""
    instruction: str | None = None
    """Task instruction prepended to the query in stages that use instructions."""
    languages: list[str] = field(default_factory=list)
    """Language tags of the record's texts (optional): counted in the shard manifest, from which a model card
    lists the training languages; not stored in the shard samples (training has no use for them)."""

    def to_json(self) -> dict:
        """The record as a JSON-ready dict."""
        # Not dataclasses.asdict: it deep-copies every list, which dominated the demo build's time.
        return {"id": self.id, "query": self.query, "positive": self.positive, "negatives": self.negatives,
                "instruction": self.instruction, "source": self.source, "task": self.task}


def text_field(obj: dict, key: str, file: str, line: int) -> str:
    """The non-empty string ``obj[key]``; a RecordError naming the file, line and field otherwise."""
    if key not in obj or obj[key] is None:
        raise RecordError(file, line, f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError(file, line, f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(file, line, f"field {key!r} is empty")
    return value


def _negatives(obj: dict, file: str, line: int) -> list[str]:
    if "negatives" not in obj or obj["negatives"] is None:
        raise RecordError(file, line, "missing field 'negatives' (use [] for none)")
    values = obj["negatives"]
    if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
        raise RecordError(file, line, f"field 'negatives' must be a list of strings, got {type(values).__name__}")
    values = list(values.tolist() if hasattr(values, "tolist") else values)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise RecordError(file, line, f"negatives[{i}] must be a string, got {type(value).__name__}")
        if not value.strip():
            raise RecordError(file, line, f"negatives[{i}] is empty")
    return values


def _languages(obj: dict, file: str, line: int) -> list[str]:
    values = obj.get("languages", obj.get("language"))
    if values is None:
        return []
    values = [values] if isinstance(values, str) else values
    if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
        raise RecordError(file, line, f"field 'languages' must be a list of language tags, got {type(values).__name__}")
    values = list(values.tolist() if hasattr(values, "tolist") else values)
    for value in values:
        if not isinstance(value, str) or not LANGUAGE_CODE.fullmatch(value):
            raise RecordError(file, line, f"language {value!r} is not a language tag (ISO 639, like 'en' or 'pt-BR')")
    return values


def parse_record(obj: object, file: str, line: int) -> Record:
    """Validate one decoded record.

    Args:
        obj: The decoded JSON object (or parquet row as a dict).
        file: Input file name, for error messages.
        line: 1-based line (or row) number, for error messages.

    Raises:
        RecordError: a missing or empty field, a wrong type, an unknown task or an unusable source name.
    """
    if not isinstance(obj, dict):
        raise RecordError(file, line, f"a record must be a JSON object, got {type(obj).__name__}")
    task = text_field(obj, "task", file, line)
    if task not in TASKS:
        raise RecordError(file, line, f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    source = text_field(obj, "source", file, line)
    if not SOURCE_NAME.match(source):
        raise RecordError(file, line, f"source {source!r} may only hold letters, digits and _.+-")
    instruction = obj.get("instruction")
    if instruction is not None:
        instruction = text_field(obj, "instruction", file, line)
    rid = obj.get("id")
    if rid is None:
        rid = f"{Path(file).name}:{line}"
    elif not isinstance(rid, str) or not rid:
        raise RecordError(file, line, f"field 'id' must be a non-empty string, got {rid!r}")
    return Record(
        id=rid, query=text_field(obj, "query", file, line), positive=text_field(obj, "positive", file, line),
        source=source, task=task, negatives=_negatives(obj, file, line), instruction=instruction,
        languages=_languages(obj, file, line),
    )


def read_rows(path: str | Path, flag: str = "--input") -> Iterator[tuple[int, object]]:
    """Yield ``(line, decoded row)`` of a JSONL or parquet file, unvalidated; unreadable lines as ``RecordError``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    return _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)


def read_records(path: str | Path) -> Iterator[tuple[int, Record | RecordError]]:
    """Yield ``(line, record)`` for every record of a JSONL or parquet file; bad ones as ``RecordError``.

    Errors are yielded rather than raised so the caller decides between failing and skipping (and counting).
    """
    for line, obj in read_rows(path):
        if isinstance(obj, RecordError):
            yield line, obj
            continue
        try:
            yield line, parse_record(obj, str(path), line)
        except RecordError as err:
            yield line, err


def has_records(path: str | Path) -> bool:
    """Whether ``path`` holds a record, valid or not: False for an empty file or one of only blank lines."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such file")
    if path.stat().st_size == 0:
        return False
    if path.suffix == ".parquet":
        with _parquet_file(path) as file:
            return file.metadata.num_rows > 0
    rows = _jsonl_rows(path)  # the reader's own notion of a blank line; stops at the first other line
    try:
        return next(rows, None) is not None
    finally:
        rows.close()


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    # surrogateescape turns each byte that is not UTF-8 into one lone surrogate (which valid text never holds),
    # so a bad byte is reported with its line, like any other bad record, instead of stopping the whole read.
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue  # blank lines (a trailing newline) are not records
            bad = None if text.isascii() else NOT_UTF8.search(text)
            if bad is not None:
                byte = ord(bad.group()) - 0xDC00
                yield line, RecordError(str(path), line, f"not valid UTF-8 (byte 0x{byte:02x} at column "
                                                         f"{bad.start() + 1}); save the file as UTF-8")
                continue
            try:
                yield line, json.loads(text)
            except json.JSONDecodeError as err:
                yield line, RecordError(str(path), line, f"bad JSON: {err.msg} (column {err.colno})")


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is a dev extra
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from err
    # pre_buffer=False: with it on (pyarrow's default), iter_batches reads ahead over the whole file, so memory
    # grew with the file's size; off, it holds about one row group at a time.
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError; a bad read an OSError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--input {path}: not a readable parquet file ({reason})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, object]]:
    line = 0
    for batch in _parquet_file(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            line += 1
            yield line, row
