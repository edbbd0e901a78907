"""Writing shards: the manifest, every bad-input case, and the guarantees after a crash."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds

from mlembed.cli.shards import main
from mlembed.data.manifest import ShardManifest
from mlembed.data.records import RecordError
from mlembed.data.shards import write_shards
from mlembed.data.stream import read_samples

from .conftest import SOURCES, make_records, write_jsonl

GOOD = {"query": "q", "positive": "p", "negatives": ["n"], "source": "s", "task": "retrieval"}


def test_manifest_counts_every_source_and_shard(shard_dir):
    manifest = ShardManifest.load(shard_dir)
    sources = manifest.sources()
    assert {k: (v["task"], v["samples"]) for k, v in sources.items()} == SOURCES
    for shard in manifest.shards:
        assert shard.path.startswith(shard.source + "-")
        samples = list(read_samples([str(shard_dir / shard.path)]))
        assert len(samples) == shard.samples == 10
        assert {s["source"] for s in samples} == {shard.source}  # one source per shard
    written = json.loads((shard_dir / "manifest.json").read_text())
    assert written["tasks"] == {"retrieval": 60, "clustering": 40, "sts": 20}


def test_manifest_keeps_each_shards_instructions_and_languages_but_samples_stay_as_they_were(tmp_path):
    rows = [{**GOOD, "id": f"a{i}", "instruction": f"task {i % 3}", "languages": ["en", "pt-BR"]} for i in range(9)]
    rows += [{**GOOD, "id": f"b{i}", "source": "t", "language": "de"} for i in range(4)]  # one tag, no instruction
    rows += [{**GOOD, "id": f"c{i}", "source": "u", "instruction": f"many {i}"} for i in range(40)]
    manifest = write_shards([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out", shard_size=5)
    assert manifest.instructions() == {"s": {"task 0": 3, "task 1": 3, "task 2": 3},
                                       "u": {f"many {i}": 1 for i in range(40)}}  # 16 per shard of 5: all kept
    assert manifest.languages() == {"en": 9, "pt-BR": 9, "de": 4}
    shards = {shard.path: shard for shard in manifest.shards}
    assert shards["s-000000.tar"].instruction_texts == {"task 0": 2, "task 1": 2, "task 2": 1}  # rows 0-4
    assert shards["t-000000.tar"].instruction_texts is None and shards["t-000000.tar"].languages == {"de": 4}
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written["languages"] == {"en": 9, "pt-BR": 9, "de": 4}
    assert ShardManifest.load(tmp_path / "out").instructions() == manifest.instructions()  # read back
    sample = next(iter(read_samples([str(tmp_path / "out" / "s-000000.tar")])))
    assert "languages" not in sample and "language" not in sample  # training reads the same samples as before


def test_a_shards_manifest_keeps_its_first_distinct_instructions(tmp_path):
    rows = [{**GOOD, "id": str(i), "instruction": f"instruction {i % 20}"} for i in range(40)]
    manifest = write_shards([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out", shard_size=100)
    (shard,) = manifest.shards
    assert shard.instructions == 40  # every sample with one is counted
    assert shard.instruction_texts == {f"instruction {i}": 2 for i in range(16)}  # the first 16 texts are listed


def test_parquet_input_gives_the_same_samples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_records()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    manifest = write_shards([tmp_path / "r.parquet"], tmp_path / "out", shard_size=100)
    ids = [s["id"] for sh in manifest.shards for s in read_samples([str(tmp_path / "out" / sh.path)])]
    assert sorted(ids) == sorted(r["id"] for r in rows)


BAD = [
    ({k: v for k, v in GOOD.items() if k != "positive"}, "missing field 'positive'"),
    ({**GOOD, "query": "  "}, "field 'query' is empty"),
    ({**GOOD, "negatives": ["ok", ""]}, "negatives[1] is empty"),
    ("{\"query\": \"q\", ", "bad JSON"),
    ({**GOOD, "query": 3}, "field 'query' must be a string, got int"),
    ({**GOOD, "negatives": "n"}, "field 'negatives' must be a list"),
    ({**GOOD, "task": "ranking"}, "unknown task 'ranking'"),
    ({**GOOD, "source": "a/b"}, "source 'a/b' may only hold"),
    ({**GOOD, "languages": ["en", "English"]}, "language 'English' is not a language tag"),
    ({**GOOD, "languages": "e"}, "language 'e' is not a language tag"),
    ({**GOOD, "languages": {"en": 1}}, "field 'languages' must be a list of language tags, got dict"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_record_raises_with_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(RecordError, match=re.escape(message)) as info:
        write_shards([path], tmp_path / "out")
    assert str(info.value).startswith(f"{path}:3: ")
    assert (info.value.file, info.value.line) == (str(path), 3)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_skip_invalid_counts_every_case_in_manifest_and_summary(tmp_path, capsys):
    rows = [GOOD] + [bad for bad, _ in BAD] + [GOOD]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["--input", str(path), "--output", str(tmp_path / "out"), "--skip-invalid"]) == 0
    manifest = ShardManifest.load(tmp_path / "out")
    assert manifest.invalid == len(BAD)
    assert sum(s.samples for s in manifest.shards) == 2
    for _, message in BAD:
        assert any(message in reason for reason in manifest.invalid_reasons)
    assert manifest.invalid_examples[0].startswith(f"{path}:2: ")
    assert f"skipped {len(BAD)} invalid records" in capsys.readouterr().out


def test_cli_reports_bad_record_and_fails(tmp_path, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD, {**GOOD, "task": "nope"}])
    assert main(["--input", str(path), "--output", str(tmp_path / "out")]) == 2
    assert f"{path}:2: unknown task 'nope'" in capsys.readouterr().err


def test_non_empty_output_is_refused_and_kept_unless_overwrite(tmp_path, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    out = tmp_path / "out"
    assert main(["--input", str(path), "--output", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = write_jsonl(tmp_path / "other.jsonl", [{**GOOD, "source": "t"}] * 3)
    assert main(["--input", str(other), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err
    assert re.search(rf"--output {re.escape(str(out))} exists and is not empty; pass --overwrite", err), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["--input", str(other), "--output", str(out), "--overwrite"]) == 0
    assert [s.source for s in ShardManifest.load(out).shards] == ["t"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "t-000000.tar"]


def _assert_no_incomplete_shard(out, shard_size):
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.partial"))
    for tar in out.glob("*.tar"):  # what is left under a final name is a whole, readable shard
        with tarfile.open(tar) as handle:
            assert len(handle.getnames()) == shard_size


def test_error_midway_leaves_no_complete_looking_shard(tmp_path):
    rows = [{**GOOD, "id": str(i)} for i in range(7)] + [{**GOOD, "query": ""}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(RecordError):
        write_shards([path], tmp_path / "out", shard_size=3)
    _assert_no_incomplete_shard(tmp_path / "out", 3)
    assert len(list((tmp_path / "out").glob("*.tar"))) == 2


def test_crash_inside_tar_writer_leaves_no_partial_shard(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "in.jsonl", [{**GOOD, "id": str(i)} for i in range(8)])
    real_write, calls = wds.TarWriter.write, []

    def dying_write(self, obj):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # a process killed mid-shard
        return real_write(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        write_shards([path], tmp_path / "out", shard_size=3)
    _assert_no_incomplete_shard(tmp_path / "out", 3)
    assert len(list((tmp_path / "out").glob("*.tar"))) == 1


# A ``python -m mlembed shards`` run, slowed (a pause per record) or made to SIGKILL itself at a chosen point,
# so a kill lands mid-shard: SIGKILL runs no ``except``/``finally``, unlike the in-process crashes above.
WRITER = """
import os, signal, sys, time
import webdataset as wds
from mlembed.data import manifest, shards
from mlembed.cli.shards import main

point, argv = sys.argv[1], sys.argv[2:]
real_write, real_finish, real_save = wds.TarWriter.write, shards._SourceWriter._finish, manifest.ShardManifest.save
calls = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def write(self, obj):
    calls.append(1)
    if point == "slow":
        time.sleep(0.005)
    size = real_write(self, obj)
    if point == "mid-shard" and len(calls) == 5:  # shard 0 done, shard 1 holds 2 records: flush them, die
        self.stream.flush()
        die()
    return size

def finish(self, fname):
    if point == "before-rename":  # the first shard is closed, not yet renamed
        die()
    real_finish(self, fname)
    if point == "after-rename" and len(self.manifest.shards) == 2:
        die()

def save(self, directory):
    if point == "before-manifest":  # every shard renamed, the manifest not yet written
        die()
    return real_save(self, directory)

wds.TarWriter.write, shards._SourceWriter._finish, manifest.ShardManifest.save = write, finish, save
sys.exit(main(argv))
"""
KILL_POINTS = ["mid-shard", "before-rename", "after-rename", "before-manifest"]


def _writer(point: str, *argv: str) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", WRITER, point, *argv], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _assert_killed_build_looks_unfinished(out: Path, shard_size: int) -> None:
    """After a SIGKILL: no manifest, and every file under a final shard name is whole (all its records)."""
    assert not (out / "manifest.json").exists()
    for tar in out.iterdir():
        if re.fullmatch(r"s-\d{6}\.tar", tar.name):
            with tarfile.open(tar) as handle:  # a truncated tar raises here, or holds fewer members
                assert len(handle.getnames()) == shard_size, f"{tar.name} is incomplete under its final name"
            assert len(list(read_samples([str(tar)]))) == shard_size
        else:  # only the files a build in progress writes
            assert tar.name.endswith((".tar.partial", ".json.tmp")), tar.name
    with pytest.raises(FileNotFoundError, match="unfinished build"):
        ShardManifest.load(out)


def _assert_full_build(out: Path, rows: list[dict], shard_size: int) -> None:
    manifest = ShardManifest.load(out)
    ids = [s["id"] for shard in manifest.shards for s in read_samples([str(out / shard.path)])]
    assert ids == [r["id"] for r in rows]
    assert [s.samples for s in manifest.shards] == [shard_size] * (len(rows) // shard_size)
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *(s.path for s in manifest.shards)])


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_each_point_of_a_shard_leaves_nothing_complete_looking(tmp_path, point):
    rows = [{**GOOD, "id": str(i)} for i in range(9)]
    path, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out"
    proc = _writer(point, "--input", str(path), "--output", str(out), "--shard-size", "3")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    _assert_killed_build_looks_unfinished(out, 3)
    finals = sorted(p.name for p in out.glob("*.tar"))
    assert finals == {"mid-shard": ["s-000000.tar"], "before-rename": [], "after-rename": ["s-000000.tar",
                      "s-000001.tar"], "before-manifest": ["s-000000.tar", "s-000001.tar", "s-000002.tar"]}[point]
    if point in ("mid-shard", "before-rename"):
        assert list(out.glob("*.tar.partial"))  # the shard being written is left under its temporary name
    # The unfinished directory is refused as it is, and rebuilt whole with --overwrite.
    assert main(["--input", str(path), "--output", str(out), "--shard-size", "3"]) == 2
    assert main(["--input", str(path), "--output", str(out), "--shard-size", "3", "--overwrite"]) == 0
    _assert_full_build(out, rows, 3)


def test_sigkill_from_outside_mid_shard_then_rerun_builds_everything(tmp_path):
    rows = [{**GOOD, "id": str(i)} for i in range(2000)]
    path, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out"
    proc = _writer("slow", "--input", str(path), "--output", str(out), "--shard-size", "20")
    deadline = time.monotonic() + 120
    try:
        # Kill a few records into the third shard (two are finished), whatever names the writer uses.
        while len(list(out.glob("s-*"))) < 3:
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the writer never got to its third shard"
            time.sleep(0.002)
        time.sleep(0.03)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert len(list(out.glob("*.tar"))) < len(rows) // 20  # it really died mid-build
    _assert_killed_build_looks_unfinished(out, 20)
    assert main(["--input", str(path), "--output", str(out), "--shard-size", "20", "--overwrite"]) == 0
    _assert_full_build(out, rows, 20)


def test_sigkill_during_overwrite_keeps_the_earlier_build(tmp_path):
    old_rows = [{**GOOD, "id": f"old{i}"} for i in range(6)]
    rows = [{**GOOD, "id": str(i)} for i in range(9)]
    old, path, out = write_jsonl(tmp_path / "old.jsonl", old_rows), write_jsonl(tmp_path / "in.jsonl", rows), \
        tmp_path / "out"
    assert main(["--input", str(old), "--output", str(out), "--shard-size", "3"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = _writer("before-manifest", "--input", str(path), "--output", str(out), "--shard-size", "3", "--overwrite")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier build, whole
    _assert_full_build(out, old_rows, 3)
    assert main(["--input", str(path), "--output", str(out), "--shard-size", "3", "--overwrite"]) == 0
    _assert_full_build(out, rows, 3)


def test_missing_input_and_bad_shard_size(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert f"error: --input {tmp_path / 'nope.jsonl'}: no such file" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--shard-size \(0\) must be at least 1"):
        write_shards([], tmp_path / "o2", shard_size=0)
