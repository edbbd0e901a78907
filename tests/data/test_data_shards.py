"""Writing shards: the manifest, every bad-input case, and the guarantees after a crash."""

from __future__ import annotations

import json
import re
import tarfile

import pytest
import webdataset as wds

from mlembed.data.manifest import Manifest
from mlembed.data.records import RecordError
from mlembed.data.shards import write_shards
from mlembed.data.shards_cli import main
from mlembed.data.stream import read_samples

from .conftest import SOURCES, make_records, write_jsonl

GOOD = {"query": "q", "positive": "p", "negatives": ["n"], "source": "s", "task": "retrieval"}


def test_manifest_counts_every_source_and_shard(shard_dir):
    manifest = Manifest.load(shard_dir)
    sources = manifest.sources()
    assert {k: (v["task"], v["samples"]) for k, v in sources.items()} == SOURCES
    for shard in manifest.shards:
        assert shard.path.startswith(shard.source + "-")
        samples = list(read_samples([str(shard_dir / shard.path)]))
        assert len(samples) == shard.samples == 10
        assert {s["source"] for s in samples} == {shard.source}  # one source per shard
    written = json.loads((shard_dir / "manifest.json").read_text())
    assert written["tasks"] == {"retrieval": 60, "clustering": 40, "sts": 20}


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
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.invalid == len(BAD)
    assert sum(s.samples for s in manifest.shards) == 2
    for _, message in BAD:
        assert any(message in reason for reason in manifest.invalid_reasons)
    assert manifest.invalid_examples[0].startswith(f"{path}:2: ")
    assert f"skipped {len(BAD)} invalid records" in capsys.readouterr().out


def test_cli_reports_bad_record_and_fails(tmp_path, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD, {**GOOD, "task": "nope"}])
    assert main(["--input", str(path), "--output", str(tmp_path / "out")]) == 1
    assert f"{path}:2: unknown task 'nope'" in capsys.readouterr().err


def test_non_empty_output_is_refused_and_kept_unless_overwrite(tmp_path, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    out = tmp_path / "out"
    assert main(["--input", str(path), "--output", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = write_jsonl(tmp_path / "other.jsonl", [{**GOOD, "source": "t"}] * 3)
    assert main(["--input", str(other), "--output", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["--input", str(other), "--output", str(out), "--overwrite"]) == 0
    assert [s.source for s in Manifest.load(out).shards] == ["t"]
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


def test_missing_input_and_bad_shard_size(tmp_path):
    assert main(["--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")]) == 1
    with pytest.raises(ValueError, match="--shard-size"):
        write_shards([], tmp_path / "o2", shard_size=0)
