"""Common user mistakes get a clear message, or just work: a run shorter than its validation interval,
an input file that is not UTF-8, an empty input file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mlembed.cli import main
from mlembed.data.manifest import MANIFEST_NAME
from tests.helpers import failure, snapshot
from tests.robustness.tiny_run import FIXTURES, fit_args

GOOD = (FIXTURES / "stage1.jsonl").read_text().splitlines()[:3]


def shards(source: Path, out: Path, *extra: str) -> list[str]:
    return ["shards", "--input", str(source), "--output", str(out), *extra]


# -- a run shorter than its validation interval -------------------------------------------------------------
def test_short_run_lowers_val_check_interval_and_validates(capsys, tiny_shards, tmp_path):
    code = main(fit_args(tiny_shards, tmp_path, "--trainer.val_check_interval=5", "--data.stage1.steps=1",
                         "--data.stage2.steps=1", "--trainer.limit_val_batches=1"))
    assert code == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "--trainer.val_check_interval" in line]
    assert len(notes) == 1 and "5" in notes[0] and "2 training batches" in notes[0]
    rows = list(csv.DictReader(next(tmp_path.glob("**/metrics.csv")).open()))
    assert sum(1 for r in rows if r.get("val/loss")) == 1  # validated once, at the end of the 2 batches


def test_short_run_with_epoch_free_validation_still_validates(capsys, tiny_shards, tmp_path):
    # check_val_every_n_epoch=None: Lightning does not complain, the run just never reached batch 5.
    code = main(fit_args(tiny_shards, tmp_path, "--trainer.val_check_interval=5",
                         "--trainer.check_val_every_n_epoch=null", "--data.stage1.steps=1", "--data.stage2.steps=1",
                         "--trainer.limit_val_batches=1"))
    assert code == 0
    assert "--trainer.val_check_interval=5" in capsys.readouterr().out
    rows = list(csv.DictReader(next(tmp_path.glob("**/metrics.csv")).open()))
    assert any(r.get("val/loss") for r in rows)


# -- input that is not UTF-8 ------------------------------------------------------------------------------
def write_bytes(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def bad_utf8_line() -> bytes:
    record = json.loads(GOOD[1])
    return json.dumps({**record, "query": "caf\u00e9"}, ensure_ascii=False).encode().replace("\u00e9".encode(), b"\xff")


def test_invalid_utf8_names_file_line_and_reason(capsys, tmp_path):
    source = write_bytes(tmp_path / "latin1.jsonl", GOOD[0].encode(), bad_utf8_line(), GOOD[2].encode())
    message = failure(capsys, shards(source, tmp_path / "out"))
    assert f"{source}:2: not valid UTF-8" in message and "0xff" in message
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_invalid_utf8_line_is_skipped_and_counted_with_skip_invalid(capsys, tmp_path):
    source = write_bytes(tmp_path / "latin1.jsonl", GOOD[0].encode(), bad_utf8_line(), GOOD[2].encode())
    assert main(shards(source, tmp_path / "out", "--skip-invalid")) == 0
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["invalid"] == 1 and f"{source}:2: not valid UTF-8" in manifest["invalid_examples"][0]
    assert "2 samples" in capsys.readouterr().out


def test_skip_invalid_with_no_valid_record_fails_and_keeps_earlier_shards(capsys, tmp_path):
    bad = write_bytes(tmp_path / "bad.jsonl", bad_utf8_line(), bad_utf8_line())
    message = failure(capsys, shards(bad, tmp_path / "new", "--skip-invalid"))
    assert "every record was invalid (2 skipped by --skip-invalid" in message and f"{bad}:1: not valid UTF-8" in message
    assert not list((tmp_path / "new").iterdir())  # no empty manifest that would read as a finished build
    good = write_bytes(tmp_path / "good.jsonl", *(line.encode() for line in GOOD))
    out = tmp_path / "out"
    assert main(shards(good, out)) == 0
    before = snapshot(out)
    assert "every record was invalid" in failure(capsys, shards(bad, out, "--skip-invalid", "--overwrite"))
    assert snapshot(out) == before


def test_invalid_utf8_keeps_earlier_shards_on_overwrite(capsys, tmp_path):
    good = write_bytes(tmp_path / "good.jsonl", *(line.encode() for line in GOOD))
    out = tmp_path / "out"
    assert main(shards(good, out)) == 0
    before = snapshot(out)
    source = write_bytes(tmp_path / "latin1.jsonl", *(line.encode() for line in GOOD), bad_utf8_line())
    message = failure(capsys, shards(source, out, "--overwrite"))
    assert f"{source}:4: not valid UTF-8" in message
    assert snapshot(out) == before


# -- empty input --------------------------------------------------------------------------------------------
def test_empty_input_is_an_error_naming_the_file(capsys, tmp_path):
    for name, content in (("zero.jsonl", b""), ("blank.jsonl", b"\n  \n\n")):
        source = tmp_path / name
        source.write_bytes(content)
        out = tmp_path / f"out-{name}"
        message = failure(capsys, shards(source, out))
        assert f"{source}: no records" in message
        assert not (out / MANIFEST_NAME).exists()


def test_empty_inputs_among_several_are_all_named(capsys, tmp_path):
    good = write_bytes(tmp_path / "good.jsonl", *(line.encode() for line in GOOD))
    empty1, empty2 = tmp_path / "empty1.jsonl", tmp_path / "empty2.jsonl"
    empty1.write_bytes(b"")
    empty2.write_bytes(b"\n")
    out = tmp_path / "out"
    message = failure(capsys, ["shards", "--input", str(empty1), str(good), str(empty2), "--output", str(out)])
    assert f"{empty1}: no records" in message and f"{empty2}: no records" in message
    assert f"{good}:" not in message
    assert not (out / MANIFEST_NAME).exists()


def test_empty_input_with_overwrite_keeps_earlier_shards(capsys, tmp_path):
    good = write_bytes(tmp_path / "good.jsonl", *(line.encode() for line in GOOD))
    out = tmp_path / "out"
    assert main(shards(good, out)) == 0
    before = snapshot(out)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert f"{empty}: no records" in failure(capsys, shards(empty, out, "--overwrite"))
    assert snapshot(out) == before
