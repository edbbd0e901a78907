"""``python -m mlembed shards --format f2llm``: the released ML-Embed / F2LLM-v2 layout, on a miniature of it.

The miniature is written here with pyarrow: one parquet file per source, named after it, with ``query``,
``passage`` and ``negative_1``..``negative_24`` (``negative_1`` alone for a classification source), in several
row groups, with empty negative cells.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlembed.cli.shards import main
from mlembed.data.f2llm import Columns, plan_sources, write_f2llm_shards
from mlembed.data.manifest import ShardManifest
from mlembed.data.records import RecordError
from mlembed.data.shards import WorkerDied
from mlembed.data.source_tasks import CLASSIFICATION_SOURCES, CLUSTERING_SOURCES, RETRIEVAL_SOURCES
from mlembed.data.stream import read_samples

# One name from each of the reference's lists, with its row count, negative columns and row-group size.
MINI = {"imdb": (23, 1, 5), "banking77": (31, 24, 8), "msmarco": (40, 24, 9)}
EMPTY_CELLS = {("banking77", 3): ("negative_5", ""), ("banking77", 17): ("negative_12", None),
               ("msmarco", 11): ("negative_24", "   "), ("imdb", 4): ("negative_1", None)}
"""(source, 1-based row) -> the negative cell left empty there (blank string or null)."""


def release_row(source: str, row: int, negatives: int) -> dict:
    out = {"query": f"Instruct: find it\nQuery: {source} question {row}", "passage": f"{source} answer {row}"}
    for i in range(1, negatives + 1):
        out[f"negative_{i}"] = f"{source} wrong {row}.{i}"
    if (source, row) in EMPTY_CELLS:
        column, value = EMPTY_CELLS[source, row]
        out[column] = value
    return out


def expected_negatives(source: str, row: int, negatives: int) -> list[str]:
    empty = EMPTY_CELLS.get((source, row), (None,))[0]
    return [f"{source} wrong {row}.{i}" for i in range(1, negatives + 1) if f"negative_{i}" != empty]


def write_release(directory: Path, sources: dict = MINI) -> list[Path]:
    """The miniature, columns stored in name order (negative_10 before negative_2) so that order is tested."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for source, (rows, negatives, group) in sources.items():
        table = pa.Table.from_pylist([release_row(source, r, negatives) for r in range(1, rows + 1)])
        table = table.select(sorted(table.column_names))
        path = directory / f"{source}.parquet"
        pq.write_table(table, path, row_group_size=group)
        assert pq.ParquetFile(path).num_row_groups > 1
        paths.append(path)
    return paths


def samples_by_shard(out: Path) -> dict[str, list[dict]]:
    return {shard.path: list(read_samples([str(out / shard.path)])) for shard in ShardManifest.load(out).shards}


@pytest.fixture
def release(tmp_path) -> list[Path]:
    return write_release(tmp_path / "release")


def test_the_table_holds_the_reference_lists_without_overlap():
    assert {"imdb", "banking77", "msmarco"} <= CLASSIFICATION_SOURCES | CLUSTERING_SOURCES | RETRIEVAL_SOURCES
    assert (len(CLASSIFICATION_SOURCES), len(CLUSTERING_SOURCES), len(RETRIEVAL_SOURCES)) == (10, 33, 459)
    assert not (CLASSIFICATION_SOURCES & CLUSTERING_SOURCES or CLASSIFICATION_SOURCES & RETRIEVAL_SOURCES
                or CLUSTERING_SOURCES & RETRIEVAL_SOURCES)


def test_every_row_round_trips_with_its_source_task_and_negatives_in_order(release, tmp_path):
    out = tmp_path / "out"
    manifest = write_f2llm_shards(release, out, shard_size=10)
    tasks = {"imdb": "classification", "banking77": "clustering", "msmarco": "retrieval"}
    assert {name: (entry["task"], entry["samples"]) for name, entry in manifest.sources().items()} == {
        name: (tasks[name], rows) for name, (rows, _, _) in MINI.items()}
    for source, (rows, negatives, _) in MINI.items():
        shards = [s for s in manifest.shards if s.source == source]
        assert [s.path for s in shards] == [f"{source}-{i:06d}.tar" for i in range(-(-rows // 10))]
        samples = [sample for shard in shards for sample in read_samples([str(out / shard.path)])]
        assert samples == [
            {"id": f"{source}.parquet:{row}", "query": f"Instruct: find it\nQuery: {source} question {row}",
             "positive": f"{source} answer {row}", "negatives": expected_negatives(source, row, negatives),
             "instruction": None, "source": source, "task": tasks[source]}
            for row in range(1, rows + 1)
        ]
    assert manifest == ShardManifest.load(out)


def test_empty_negative_cells_are_left_out_and_the_rest_keep_their_order(release, tmp_path):
    write_f2llm_shards(release, tmp_path / "out", shard_size=100)
    rows = {(s["source"], int(s["id"].split(":")[1])): s for shard in samples_by_shard(tmp_path / "out").values()
            for s in shard}
    banking = rows["banking77", 3]["negatives"]
    assert len(banking) == 23 and "banking77 wrong 3.5" not in banking
    assert banking[3:6] == ["banking77 wrong 3.4", "banking77 wrong 3.6", "banking77 wrong 3.7"]
    assert banking[8:10] == ["banking77 wrong 3.10", "banking77 wrong 3.11"]  # 10 after 9, not after 1
    assert len(rows["banking77", 17]["negatives"]) == 23 and len(rows["msmarco", 11]["negatives"]) == 23
    assert rows["imdb", 4]["negatives"] == [] and rows["imdb", 5]["negatives"] == ["imdb wrong 5.1"]


def test_two_workers_write_the_same_shards_and_manifest_as_one(release, tmp_path, capsys):
    args = ["--format", "f2llm", "--input", *map(str, release), "--shard-size", "7"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--output", str(one)]) == 0
    summary = capsys.readouterr().out
    assert main([*args, "--output", str(two), "--workers", "2"]) == 0
    assert capsys.readouterr().out == summary
    assert "msmarco (retrieval): 40 samples in 6 shards" in summary
    assert json.loads((one / "manifest.json").read_text()) == json.loads((two / "manifest.json").read_text())
    assert samples_by_shard(one) == samples_by_shard(two)
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert sum(len(v) for v in samples_by_shard(two).values()) == sum(rows for rows, _, _ in MINI.values())


def test_a_bad_row_in_a_worker_stops_the_build_naming_file_and_row(release, tmp_path, capsys):
    bad = tmp_path / "release" / "msmarco.parquet"
    rows = [release_row("msmarco", r, 24) for r in range(1, 41)]
    rows[25]["query"] = " "
    pq.write_table(pa.Table.from_pylist(rows), bad, row_group_size=9)
    out = tmp_path / "out"
    args = ["--format", "f2llm", "--input", *map(str, release), "--output", str(out), "--shard-size", "5"]
    assert main([*args, "--workers", "2"]) == 2
    assert f"{bad}:26: field 'query' is empty" in capsys.readouterr().err
    assert not (out / "manifest.json").exists() and not list(out.glob("*.partial"))
    assert main([*args, "--skip-invalid", "--overwrite"]) == 0
    manifest = ShardManifest.load(out)
    assert manifest.invalid == 1 and manifest.invalid_examples == [f"{bad}:26: field 'query' is empty"]
    assert manifest.sources()["msmarco"]["samples"] == 39


def test_a_failed_overwrite_with_workers_keeps_the_earlier_build(release, tmp_path):
    out = tmp_path / "out"
    write_f2llm_shards(release, out, shard_size=10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rows = [release_row("imdb", r, 1) for r in range(1, 24)]
    rows[20]["passage"] = None
    pq.write_table(pa.Table.from_pylist(rows), release[0], row_group_size=5)
    with pytest.raises(RecordError, match=re.escape(f"{release[0]}:21: missing field 'positive'")):
        write_f2llm_shards(release, out, shard_size=10, overwrite=True, workers=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "release"]  # no staging directory left


def test_an_unknown_source_is_an_error_naming_it_and_the_flag(release, tmp_path, capsys):
    extra = write_release(tmp_path / "release", {"my_corpus": (4, 24, 2)})
    out = tmp_path / "out"
    assert main(["--format", "f2llm", "--input", *map(str, release + extra), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"source 'my_corpus' ({extra[0]}) is in none of the reference's task lists" in err
    assert "--task-of my_corpus=TASK" in err and "--task-map" in err
    assert "imdb" not in err and not out.exists()  # only the unknown source is named; nothing is written


def test_task_of_and_task_map_give_tasks_and_task_of_wins(release, tmp_path):
    extra = write_release(tmp_path / "release", {"my_corpus": (4, 24, 2), "their_pairs": (3, 1, 2)})
    task_map = tmp_path / "tasks.yaml"
    task_map.write_text("my_corpus: bitext\ntheir_pairs: sts\nnot_given: clustering\n")
    out = tmp_path / "out"
    assert main(["--format", "f2llm", "--input", *map(str, release + extra), "--output", str(out),
                 "--task-map", str(task_map), "--task-of", "their_pairs=clustering", "--task-of",
                 "msmarco=sts"]) == 0
    tasks = {name: entry["task"] for name, entry in ShardManifest.load(out).sources().items()}
    assert tasks == {"imdb": "classification", "banking77": "clustering", "msmarco": "sts", "my_corpus": "bitext",
                     "their_pairs": "clustering"}
    with pytest.raises(ValueError, match=r"--task-of my_corpus=ranking: unknown task 'ranking'"):
        plan_sources(extra, task_of=["my_corpus=ranking"])


@pytest.mark.parametrize("drop,column,flag", [("passage", "'passage' (the positive)", "--columns positive="),
                                              ("query", "'query' (the query)", "--columns query=")])
def test_a_missing_column_is_an_error_naming_file_and_column(tmp_path, capsys, drop, column, flag):
    path = tmp_path / "msmarco.parquet"
    rows = [{k: v for k, v in release_row("msmarco", r, 2).items() if k != drop} for r in range(1, 4)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert main(["--format", "f2llm", "--input", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--input {path}: no column {column}" in err and flag in err


def test_no_negative_column_is_an_error_unless_none_are_asked_for(tmp_path):
    path = tmp_path / "msmarco.parquet"
    pq.write_table(pa.Table.from_pylist([{"query": "q", "passage": "p"}]), path)
    with pytest.raises(ValueError, match=re.escape(f"--input {path}: no column matches 'negative_*'")):
        plan_sources([path])
    manifest = write_f2llm_shards([path], tmp_path / "out", columns="negatives=")
    assert [s["negatives"] for s in read_samples([str(tmp_path / "out" / manifest.shards[0].path)])] == [[]]


def test_columns_map_another_layout_with_a_glob_or_a_list_column(tmp_path):
    rows = [{"anchor": f"a{i}", "pos": f"p{i}", "neg_b": f"b{i}", "neg_a": f"a{i}", "neg_10": "", "uid": i,
             "negs": [f"x{i}", None, f"y{i}"]} for i in range(3)]
    path = tmp_path / "msmarco.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    glob = write_f2llm_shards([path], tmp_path / "glob", columns="query=anchor,positive=pos,negatives=neg_*,id=uid")
    samples = list(read_samples([str(tmp_path / "glob" / glob.shards[0].path)]))
    assert [(s["id"], s["query"], s["positive"], s["negatives"]) for s in samples] == [
        (str(i), f"a{i}", f"p{i}", [f"a{i}", f"b{i}"]) for i in range(3)]
    listed = write_f2llm_shards([path], tmp_path / "list", columns=Columns(query="anchor", positive="pos",
                                                                           negatives="negs"))
    samples = list(read_samples([str(tmp_path / "list" / listed.shards[0].path)]))
    assert [s["negatives"] for s in samples] == [[f"x{i}", f"y{i}"] for i in range(3)]
    with pytest.raises(ValueError, match=r"'label=y' is not FIELD=COLUMN"):
        Columns.parse("query=anchor,label=y")


def test_only_task_writes_those_sources_and_names_the_others(release, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--format", "f2llm", "--input", *map(str, release), "--output", str(out),
                 "--only-task", "retrieval"]) == 0
    assert list(ShardManifest.load(out).sources()) == ["msmarco"]
    assert "left out (--only-task retrieval): banking77 (clustering), imdb (classification)" in capsys.readouterr().err


def test_a_stem_with_a_hash_names_a_usable_source(tmp_path):
    path = write_release(tmp_path, {"xcodeeval_nl2code_C#": (3, 24, 2)})[0]
    manifest = write_f2llm_shards([path], tmp_path / "out")
    assert {s.source: s.task for s in manifest.shards} == {"xcodeeval_nl2code_Csharp": "retrieval"}


def test_f2llm_flags_need_the_format(release, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--input", str(release[0]), "--output", str(tmp_path / "out"), "--workers", "2"])
    assert info.value.code == 2 and "--workers need --format f2llm" in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_sigkill_of_a_two_worker_build_stops_the_workers_and_leaves_nothing_complete_looking(tmp_path):
    sources = {"msmarco": (10_000, 24, 1000), "banking77": (10_000, 24, 1000)}
    release, out = write_release(tmp_path / "release", sources), tmp_path / "out"
    args = ["--format", "f2llm", "--input", *map(str, release), "--output", str(out), "--shard-size", "500"]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mlembed", "shards", *args, "--workers", "2"], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (list(out.glob("msmarco-*.tar")) and list(out.glob("banking77-*.tar"))):  # both are writing
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the workers never finished a shard"
            time.sleep(0.002)
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in workers if _running(pid)]
        assert not left, f"workers {left} kept running after the writer was killed"
    finally:
        for pid in [proc.pid, *workers]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert len(workers) >= 2
    finals = sorted(out.glob("*.tar"))
    assert len(finals) < 40  # the workers stopped with the writer instead of finishing their sources
    assert not (out / "manifest.json").exists() and not list(out.glob("*.partial"))
    for tar in finals:  # what is left under a final name is a whole shard
        with tarfile.open(tar) as handle:
            assert len(handle.getnames()) == 500, tar.name
    assert main([*args, "--workers", "2", "--overwrite"]) == 0
    assert {name: entry["samples"] for name, entry in ShardManifest.load(out).sources().items()} == {
        "msmarco": 10_000, "banking77": 10_000}


def _spawned_workers(before: set[int]) -> list[int]:
    """Worker processes (multiprocessing spawn) this process started since ``before`` was taken."""
    out = []
    for pid in _children(os.getpid()):
        try:
            if pid not in before and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes() and _running(pid):
                out.append(pid)
        except OSError:
            continue
    return out


def test_a_killed_worker_stops_the_build_with_an_error_and_no_partial_shard(tmp_path):
    release = write_release(tmp_path / "release", {"msmarco": (10_000, 24, 1000), "banking77": (10_000, 24, 1000)})
    out, before, killed = tmp_path / "out", set(_children(os.getpid())), []

    def kill_a_worker_once_a_shard_is_written() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            workers = _spawned_workers(before) if list(out.glob("*.tar")) else []
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.002)

    killer = threading.Thread(target=kill_a_worker_once_a_shard_is_written)
    killer.start()
    try:
        with pytest.raises(WorkerDied, match="worker process died"):
            write_f2llm_shards(release, out, shard_size=500, workers=2)
    finally:
        killed.append(None)  # stops the killer if the build ended first
        killer.join()
    assert killed[0] is not None
    assert not (out / "manifest.json").exists() and not list(out.glob("*.partial"))
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as handle:
            assert len(handle.getnames()) == 500, tar.name
    assert _spawned_workers(before) == []  # the other worker was ended too


READ_ALL = """
import sys
import pyarrow as pa
from mlembed.data.f2llm import plan_sources

jobs, _ = plan_sources(sys.argv[1:])
rows = sum(1 for _ in jobs[0].records())
print(rows, pa.default_memory_pool().max_memory())
"""


def _read_peak(path: Path) -> tuple[int, int]:
    """Rows read from ``path`` as a source, and the most memory pyarrow held meanwhile (in a fresh process)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", READ_ALL, str(path)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows, peak = map(int, done.stdout.split())
    return rows, peak


def test_reading_memory_is_flat_in_the_file_size(tmp_path):
    """pyarrow's allocations while a source is read depend on its row groups, not on how many there are."""
    schema = pa.schema([(name, pa.string()) for name in ["query", "passage", *(f"negative_{i}" for i in range(1, 25))]])
    peaks, sizes = {}, {}
    for groups in (10, 40):  # random text: 500 rows x 26 cells x 100 bytes = 1.3 MB per row group
        path = tmp_path / str(groups) / "msmarco.parquet"
        path.parent.mkdir()
        with pq.ParquetWriter(path, schema, compression="none") as writer:
            for _ in range(groups):
                writer.write_table(pa.table({name: [os.urandom(50).hex() for _ in range(500)]
                                             for name in schema.names}, schema=schema))
        rows, peaks[groups] = _read_peak(path)
        assert rows == 500 * groups
        sizes[groups] = path.stat().st_size
    assert peaks[40] < 1.2 * peaks[10], peaks  # 4x the file, the same memory
    assert peaks[40] < sizes[40] / 4, (peaks, sizes)  # (reading ahead over the file held all of it)
