"""Line readers for evaluation data (JSONL and TSV); a bad line raises ``RecordError`` (file and line), the
same error as a bad training record."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from mlembed.data.records import RecordError


def read_jsonl(path: str | Path, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSONL file.

    Args:
        path: the file.
        required: keys every object must have.

    Raises:
        RecordError: a line is not a JSON object or lacks a required key.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(str(path), number, f"not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise RecordError(str(path), number, f"expected a JSON object, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise RecordError(str(path), number, f"missing key(s) {missing}; required {list(required)}")
            yield number, row


def read_tsv(path: str | Path, columns: Sequence[str], optional: int = 0) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, {column: field})`` for each data line of a tab-separated file.

    A first line whose fields equal the column names (in any letter case) is a header and is skipped.

    Args:
        path: the file.
        columns: the column names, in order.
        optional: how many trailing columns may be absent (they are then missing from the dict).

    Raises:
        RecordError: a line has too few or too many fields.
    """
    path = Path(path)
    fewest = len(columns) - optional
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if number == 1 and [f.strip().lower() for f in fields] == [c.lower() for c in columns[: len(fields)]]:
                continue
            if not fewest <= len(fields) <= len(columns):
                counts = fewest if optional == 0 else f"{fewest} to {len(columns)}"
                raise RecordError(str(path), number, f"expected {counts} tab-separated fields "
                                                     f"({', '.join(columns)}), got {len(fields)}")
            yield number, dict(zip(columns, fields))


def read_rows(path: str | Path, columns: Sequence[str], optional: int = 0) -> Iterator[tuple[int, dict]]:
    """Read a ``.jsonl``/``.json`` file as JSONL and anything else (``.tsv``, ``.txt``) as TSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such evaluation file")
    if path.suffix.lower() in (".jsonl", ".json"):
        return read_jsonl(path, columns[: len(columns) - optional])
    return read_tsv(path, columns, optional)


def parse_float(value, path: str | Path, number: int, key: str) -> float:
    """``float(value)`` or a RecordError naming the file, line and key."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RecordError(str(path), number, f"{key} must be a number, got {value!r}") from None


def parse_text(value, path: str | Path, number: int, key: str) -> str:
    """``value`` if it is a non-empty string, else a RecordError naming the file, line and key."""
    if not isinstance(value, str) or not value.strip():
        raise RecordError(str(path), number, f"{key} must be a non-empty string, got {value!r}")
    return value
