"""The released ML-Embed / F2LLM-v2 training data as it is: one parquet file per source, named after the source.

Each file holds the columns ``query``, ``passage`` and ``negative_1`` ... ``negative_24`` (``negative_1`` alone
for sources with one negative). ``python -m mlembed shards --format f2llm`` turns every file into one source:

- source: the file's stem (a ``#``, as in the reference's ``xcodeeval_nl2code_C#``, is spelled ``sharp``, since
  source names become shard file names);
- task: from ``mlembed.data.source_tasks`` (the reference's lists), ``--task-map`` or ``--task-of``; a source
  that none of them names is an error naming it;
- positive: ``passage``; negatives: the ``negative_<i>`` cells in the order of ``i``, empty ones (null or blank)
  left out; no instruction field (the reference feeds ``query`` to the model verbatim).

``--columns`` maps other layouts of the same shape (``query=anchor,positive=pos,negatives=neg_*``). Files are read
one batch of rows at a time (``ParquetFile.iter_batches``, without pyarrow's read-ahead), so memory follows the
row groups, not the file.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from mlembed.data.manifest import ShardManifest
from mlembed.data.records import SOURCE_NAME, Record, RecordError, _parquet_file, parse_record
from mlembed.data.shards import Sampling, write_sources
from mlembed.data.source_tasks import (
    REFERENCE_TASKS,
    UnknownSourceError,
    check_task,
    load_task_map,
    parse_task_of,
)

BATCH_ROWS = 1024
"""Rows decoded at a time: with 24 negatives of a few KB each, a few tens of MB whatever the file's size."""


@dataclass(frozen=True)
class Columns:
    """Which columns of a file hold which field (``--columns``); the defaults are the F2LLM-v2 layout."""

    query: str = "query"
    positive: str = "passage"
    negatives: str = "negative_*"
    """A glob over column names (read in the order of the numbers in their names: ``negative_2`` before
    ``negative_10``), or the name of one list column; empty for none."""
    id: str | None = None
    """Column of sample ids (default: ``<file name>:<row>``)."""
    instruction: str | None = None
    """Column of instructions (default: none; the F2LLM-v2 queries hold their instruction text)."""

    @classmethod
    def parse(cls, spec: str | None) -> Columns:
        """``"query=anchor,positive=pos,negatives=neg_*"``; fields not named keep their defaults."""
        if not spec:
            return cls()
        names = {f.name for f in fields(cls)}
        values: dict[str, str] = {}
        for item in spec.split(","):
            key, sep, column = (part.strip() for part in item.partition("="))
            if not sep or key not in names:
                raise ValueError(f"--columns {spec!r}: {item.strip()!r} is not FIELD=COLUMN with FIELD one of "
                                 f"{', '.join(sorted(names))}")
            if not column and key not in ("negatives", "id", "instruction"):
                raise ValueError(f"--columns {spec!r}: {key} needs a column name")
            values[key] = column or ("" if key == "negatives" else None)
        return cls(**values)

    def layout(self, path: Path) -> FileLayout:
        """The concrete columns of ``path``; a ValueError naming the file and the column when one is missing."""
        try:
            with _parquet_file(path) as file:
                schema, rows = file.schema_arrow, file.metadata.num_rows
        except ImportError:
            raise
        except Exception as err:  # pyarrow's ArrowInvalid / OSError on a truncated or non-parquet file
            raise ValueError(f"--input {path}: not a readable parquet file ({err})") from err
        names = list(schema.names)

        def need(role: str, column: str) -> str:
            if column not in names:
                raise ValueError(f"--input {path}: no column {column!r} (the {role}); its columns are "
                                 f"{', '.join(names)}; map yours with --columns {role}=COLUMN")
            return column

        negatives: list[str] = []
        is_list = False
        if self.negatives:
            if self.negatives in names and _is_list(schema.field(self.negatives).type):
                negatives, is_list = [self.negatives], True
            else:
                negatives = sorted(fnmatch.filter(names, self.negatives), key=_natural)
                if not negatives:
                    raise ValueError(f"--input {path}: no column matches {self.negatives!r} (the negatives); its "
                                     f"columns are {', '.join(names)}; map yours with --columns negatives=PATTERN "
                                     "(or negatives= for none)")
        return FileLayout(
            path=str(path), rows=rows, query=need("query", self.query),
            positive=need("positive", self.positive), negatives=negatives, negatives_list=is_list,
            id=None if self.id is None else need("id", self.id),
            instruction=None if self.instruction is None else need("instruction", self.instruction),
        )


def _is_list(dtype) -> bool:
    import pyarrow as pa

    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


def _natural(name: str) -> list:
    """Sort key reading digit runs as numbers: negative_2 < negative_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass
class FileLayout:
    """One input file and the columns its fields are read from."""

    path: str
    rows: int
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    negatives_list: bool = False
    """``negatives`` is one list column rather than one column per negative."""
    id: str | None = None
    instruction: str | None = None


@dataclass
class TableSource:
    """One source: one parquet file, read batch by batch (a ``mlembed.data.shards.SourceJob``)."""

    source: str
    task: str
    file: FileLayout
    batch_rows: int = BATCH_ROWS

    @property
    def rows(self) -> int:
        return self.file.rows

    def records(self) -> Iterator[tuple[int, Record | RecordError]]:
        """``(row, record)`` for every row (1-based); a bad row as a ``RecordError`` naming file and row."""
        layout, path = self.file, self.file.path
        wanted = [layout.query, layout.positive, *layout.negatives, *(c for c in (layout.id, layout.instruction) if c)]
        with _parquet_file(Path(path)) as file:
            batches = file.iter_batches(batch_size=self.batch_rows, columns=list(dict.fromkeys(wanted)))
            yield from self._rows(batches)

    def _rows(self, batches) -> Iterator[tuple[int, Record | RecordError]]:
        layout, path = self.file, self.file.path
        row = 0
        for batch in batches:
            data = dict(zip(batch.schema.names, (column.to_pylist() for column in batch.columns)))
            queries, positives = data[layout.query], data[layout.positive]
            negative_columns = [data[name] for name in layout.negatives]
            ids = data[layout.id] if layout.id else None
            instructions = data[layout.instruction] if layout.instruction else None
            for i in range(batch.num_rows):
                row += 1
                if layout.negatives_list:
                    cells = negative_columns[0][i] or []
                else:
                    cells = [column[i] for column in negative_columns]
                obj = {"query": queries[i], "positive": positives[i], "negatives": [c for c in cells if _present(c)],
                       "source": self.source, "task": self.task}
                if ids is not None and ids[i] is not None:
                    obj["id"] = ids[i] if isinstance(ids[i], str) else str(ids[i])
                if instructions is not None and _present(instructions[i]):
                    obj["instruction"] = instructions[i]
                try:
                    yield row, parse_record(obj, path, row)
                except RecordError as err:
                    yield row, err


def _present(cell) -> bool:
    """Whether a cell holds something: null and blank strings are empty (a non-string is kept, to be reported)."""
    return cell is not None and not (isinstance(cell, str) and not cell.strip())


def source_name(path: Path) -> str:
    """The source a file holds: its stem, with ``#`` spelled ``sharp`` (``xcodeeval_nl2code_C#`` -> ``..._Csharp``)."""
    name = path.stem.replace("#", "sharp")
    if not SOURCE_NAME.match(name):
        raise ValueError(f"--input {path}: the file's stem {path.stem!r} is its source name, which may only hold "
                         "letters, digits and _.+-; rename the file")
    return name


def plan_sources(inputs: Sequence[str | Path], columns: Columns | str | None = None,
                 task_of: Iterable[str] | dict[str, str] = (), task_map: str | Path | None = None,
                 only_tasks: Iterable[str] | None = None) -> tuple[list[TableSource], list[TableSource]]:
    """Check every input and say what each becomes, before anything is written.

    Args:
        inputs: Parquet files, one per source (the stem names the source).
        columns: The column mapping (``Columns``, its ``--columns`` text, or None for the F2LLM-v2 layout).
        task_of: ``SOURCE=TASK`` items (``--task-of``) or a ``{source: task}`` dict; they win over ``task_map``,
            which wins over the reference's lists.
        task_map: A YAML file of ``source: task``.
        only_tasks: Keep only the sources of these tasks (None: all).

    Returns:
        ``(kept, left_out)``: the sources to write, sorted by name, and those of other tasks.

    Raises:
        FileNotFoundError: an input is missing.
        UnknownSourceError: sources of no known task (all of them named, with the flags that map them).
        ValueError: not a parquet file, two files of one source, a missing column, or a file without rows.
    """
    columns = columns if isinstance(columns, Columns) else Columns.parse(columns)
    overrides = load_task_map(task_map) if task_map else {}
    overrides.update(task_of if isinstance(task_of, dict) else parse_task_of(task_of))
    overrides = {name.replace("#", "sharp"): check_task(task, f"--task-of {name}") for name, task in overrides.items()}
    keep = None if only_tasks is None else {check_task(t, "--only-task") for t in only_tasks}
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"--input {path}: no such file")
        if path.suffix != ".parquet":
            raise ValueError(f"--input {path}: --format f2llm reads parquet files (one per source)")
    by_source: dict[str, Path] = {}
    for path in paths:
        name = source_name(path)
        if name in by_source:
            raise ValueError(f"--input {by_source[name]} and {path} are both source {name!r} (a file's stem names "
                             "its source); give each source once")
        by_source[name] = path
    tasks = {name: overrides.get(name) or REFERENCE_TASKS.get(path.stem) for name, path in by_source.items()}
    unknown = {name: [str(by_source[name])] for name, task in tasks.items() if task is None}
    if unknown:
        raise UnknownSourceError(unknown)
    jobs = [TableSource(name, tasks[name], columns.layout(by_source[name])) for name in sorted(by_source)]
    empty = [job.file.path for job in jobs if job.rows == 0]
    if empty:
        raise ValueError("\n".join(f"--input {path}: no rows" for path in empty))
    kept = [job for job in jobs if keep is None or job.task in keep]
    if not kept:
        raise ValueError(f"--only-task {' '.join(sorted(keep))}: none of the {len(jobs)} sources has that task")
    return kept, [job for job in jobs if keep is not None and job.task not in keep]


def write_f2llm_shards(inputs: Sequence[str | Path], output: str | Path, columns: Columns | str | None = None,
                       task_of: Iterable[str] | dict[str, str] = (), task_map: str | Path | None = None,
                       only_tasks: Iterable[str] | None = None, shard_size: int = 10_000,
                       skip_invalid: bool = False, overwrite: bool = False, workers: int = 1,
                       sampling: Sampling | None = None) -> ShardManifest:
    """``plan_sources`` then ``mlembed.data.shards.write_sources``: one source per file, ``workers`` at a time,
    each cut and split as ``sampling`` says."""
    jobs, _ = plan_sources(inputs, columns, task_of, task_map, only_tasks)
    return write_sources(jobs, output, shard_size=shard_size, skip_invalid=skip_invalid, overwrite=overwrite,
                         workers=workers, sampling=sampling)
