"""Integrity: no silent training on part of the data, no deleted user files, no mislabelled scores, one log
per run. Each test here failed on the code before these checks existed."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from mlembed.cli import main
from mlembed.data.manifest import MANIFEST_NAME, ShardManifest
from mlembed.data.stream import ShardError, read_samples
from tests.helpers import failure, snapshot
from tests.robustness.callbacks import SimulatedKill
from tests.robustness.conftest import STEPS
from tests.robustness.tiny_run import FIXTURES, callback, fit_args

ONE_STEP = ["--data.stage1.steps=1", "--data.stage2.steps=1"]


def cut_at_block(data: bytes) -> bytes:
    """The shard cut at 10,240 bytes: a tar record boundary, so it reads as a shorter valid tar."""
    return data[:10240]


def blank_second_header(data: bytes) -> bytes:
    """The second member's header overwritten with zeros: tar reads it as the end of the archive."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offset = tar.getmembers()[1].offset
    return data[:offset] + b"\0" * 512 + data[offset + 512:]


def damaged_stage1(shards: dict[str, Path], root: Path, damage) -> tuple[dict[str, Path], Path]:
    """``shards`` with the first stage-1 shard passed through ``damage``; the damaged shard's path."""
    stage1 = root / "stage1"
    shutil.copytree(shards["stage1"], stage1)
    first = stage1 / ShardManifest.load(stage1).shards[0].path
    first.write_bytes(damage(first.read_bytes()))
    return {**shards, "stage1": stage1}, first


def metrics_rows(root: Path) -> list[dict]:
    """The rows of the one CSV metrics file under ``root`` (empty cells left out)."""
    files = sorted(root.glob("**/metrics.csv"))
    assert len(files) == 1, files
    with files[0].open(newline="") as handle:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


# -- 1. shards are verified as they are read ------------------------------------------------------------------
@pytest.mark.parametrize("damage", [cut_at_block, blank_second_header], ids=["cut at a block", "blank header"])
def test_a_shard_that_reads_as_a_shorter_tar_stops_the_fit(capsys, tiny_shards, tmp_path, damage):
    shards, first = damaged_stage1(tiny_shards, tmp_path, damage)
    found = sum(1 for _ in tarfile.open(first))  # what tar alone sees: a valid, shorter archive
    assert 0 < found < 20
    message = failure(capsys, fit_args(shards, tmp_path, *STEPS))  # steps that read the whole of stage 1
    assert f"damaged shard {first}: its manifest records 20 samples, {found} found" in message
    assert "--data.skip_damaged=true" in message
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_skip_damaged_trains_on_the_rest_and_reports_the_shard(caplog, tiny_shards, tmp_path):
    shards, first = damaged_stage1(tiny_shards, tmp_path, cut_at_block)
    with caplog.at_level(logging.WARNING, logger="mlembed.data.stream"):
        assert main(fit_args(shards, tmp_path, *STEPS, "--data.skip_damaged=true")) == 0
    warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warnings) == 1 and f"damaged shard {first}: its manifest records 20 samples" in warnings[0]
    rows = [row for row in metrics_rows(tmp_path) if "train/loss" in row]
    assert len(rows) == 10  # every step trained
    counts = [float(row["train/damaged_shards"]) for row in rows]  # 0 until the damaged shard's end is read
    assert counts == sorted(counts) and counts[-1] == 1.0


def test_the_checksum_catches_a_changed_byte_that_keeps_the_count(tiny_shards, tmp_path):
    stage1 = tmp_path / "stage1"
    shutil.copytree(tiny_shards["stage1"], stage1)
    info = ShardManifest.load(stage1).shards[0]
    shard = stage1 / info.path
    data = shard.read_bytes()
    at = data.index(b'"query": "') + len(b'"query": "')
    shard.write_bytes(data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:])  # a letter's case: still valid JSON
    checks = {str(shard): info}
    assert len(list(read_samples([str(shard)], checks, verify="count"))) == 20  # the count alone cannot see it
    with pytest.raises(ShardError, match=rf"damaged shard {shard}: its SHA-256 .* differs from the manifest's"):
        list(read_samples([str(shard)], checks, verify="full"))


def test_the_writer_records_each_shards_checksum_and_rebuilds_give_the_same_manifest(tiny_shards, tmp_path):
    manifest = ShardManifest.load(tiny_shards["stage1"])
    for info in manifest.shards:
        assert info.sha256 == hashlib.sha256((tiny_shards["stage1"] / info.path).read_bytes()).hexdigest()
    again = tmp_path / "again"
    assert main(["shards", "--input", str(FIXTURES / "stage1.jsonl"), "--output", str(again),
                 "--shard-size", "20"]) == 0
    assert (again / MANIFEST_NAME).read_bytes() == (tiny_shards["stage1"] / MANIFEST_NAME).read_bytes()


def test_a_manifest_without_checksums_still_reads_with_the_count_check(tiny_shards, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_shards["stage1"], old)
    data = json.loads((old / MANIFEST_NAME).read_text())
    for shard in data["shards"]:
        del shard["sha256"]  # as written before checksums were recorded
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    info = ShardManifest.load(old).shards[0]
    assert info.sha256 is None
    shard = str(old / info.path)
    assert len(list(read_samples([shard], {shard: info}, verify="full"))) == 20
    (old / info.path).write_bytes(cut_at_block((old / info.path).read_bytes()))
    with pytest.raises(ShardError, match="its manifest records 20 samples"):
        list(read_samples([shard], {shard: info}, verify="full"))


def test_a_bad_verify_mode_names_the_flag(capsys, tiny_shards, tmp_path):
    message = failure(capsys, fit_args(tiny_shards, tmp_path, *ONE_STEP, "--data.verify=sometimes"))
    assert "--data.verify ('sometimes') must be one of count, full" in message


# -- 4. a resumed run continues its own log -------------------------------------------------------------------
def test_a_resumed_fit_continues_the_log_with_each_step_once(tiny_shards, tmp_path):
    every_two = callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=str(tmp_path / "ckpt"),
                         save_last=True, every_n_train_steps=2, save_top_k=0)
    with pytest.raises(SimulatedKill):  # killed with 7 steps logged, the last checkpoint after step 6
        main(fit_args(tiny_shards, tmp_path, *STEPS, every_two, callback("tests.robustness.callbacks.KillAt", step=7)))
    before = [int(row["step"]) for row in metrics_rows(tmp_path) if "train/loss" in row]
    assert before == list(range(7))
    assert main(fit_args(tiny_shards, tmp_path, *STEPS, every_two,
                         f"--ckpt_path={tmp_path / 'ckpt' / 'last.ckpt'}")) == 0
    rows = metrics_rows(tmp_path)  # one file: the same version folder
    assert [int(row["step"]) for row in rows if "train/loss" in row] == list(range(10))
    assert [int(row["step"]) for row in rows if "resumed_at_step" in row] == [6]
    assert [float(row["resumed_at_step"]) for row in rows if "resumed_at_step" in row] == [6.0]


# -- 2. no command deletes what it did not write -------------------------------------------------------------
def someone_elses_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """A non-empty folder that no mlembed command wrote (source files), and its snapshot."""
    folder = root / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "train.py").write_text("print('my code')\n")
    (folder / "notes.md").write_text("my notes\n")
    return folder, snapshot(folder)


def test_export_overwrite_refuses_a_folder_that_is_not_an_export(capsys, reference_run, tmp_path):
    folder, before = someone_elses_folder(tmp_path)
    message = failure(capsys, ["export", "--ckpt", str(reference_run["ckpt"]), "--out", str(folder), "--overwrite"])
    assert f"--out {folder} is not empty and holds no export (an export holds mlembed.json)" in message
    assert snapshot(folder) == before
    export = tmp_path / "export"  # an earlier export is replaced
    assert main(["export", "--ckpt", str(reference_run["ckpt"]), "--out", str(export), "--dim", "8"]) == 0
    assert main(["export", "--ckpt", str(reference_run["ckpt"]), "--out", str(export), "--overwrite"]) == 0
    assert json.loads((export / "mlembed.json").read_text())["dim"] == 32


def test_shards_overwrite_refuses_a_folder_that_is_not_a_shard_build(capsys, tmp_path):
    folder, before = someone_elses_folder(tmp_path)
    message = failure(capsys, ["shards", "--input", str(FIXTURES / "stage1.jsonl"), "--output", str(folder),
                               "--overwrite"])
    assert f"--output {folder} is not empty and holds no shards and manifest" in message
    assert snapshot(folder) == before


def test_evaluate_never_writes_over_a_folder_it_did_not_write(capsys, reference_run, tmp_path, monkeypatch):
    folder, before = someone_elses_folder(tmp_path)
    sts = tmp_path / "sts.jsonl"
    sts.write_text("".join(json.dumps({"text1": a, "text2": b, "score": s}) + "\n" for a, b, s in [
        ("the cat sleeps", "a cat is sleeping", 4.8), ("the cat sleeps", "stock prices fell", 0.2),
        ("I drink tea", "she drinks green tea", 3.9), ("good morning", "the station is closed", 0.5)]))
    common = ["evaluate", "--model", str(reference_run["ckpt"]), "--tasks", f"sts:{sts}", "--no-plots"]
    message = failure(capsys, [*common, "--out", str(folder), "--overwrite"])
    assert f"--out {folder} is not empty and holds no evaluation" in message
    assert snapshot(folder) == before
    monkeypatch.chdir(tmp_path)  # without --out: a new folder per run under ./evaluation
    assert main(common) == 0 and main(common) == 0
    runs = sorted((tmp_path / "evaluation").iterdir())
    assert len(runs) == 2 and all((run / "grid.csv").is_file() for run in runs)
    assert main([*common, "--out", str(runs[0]), "--overwrite"]) == 0  # an earlier evaluation is replaced


# -- 3. every axis value is range-checked where it is used -----------------------------------------------------
# The reference run's model: hidden 32, 2 layers, trained at ranks and dims {8, 16, 32}, depths {1, 2}.
@pytest.mark.parametrize("flags, expected", [
    (["--grid", "--dims", "64"], "--dims 64 is outside [1, 32] (the embedding size of"),
    (["--grid", "--depths", "3"], "--depths 3 is outside [1, 2] (the number of layers of"),
    (["--grid", "--ranks", "40"], "--ranks 40 is outside [1, 32] (the MEL rank of"),
], ids=["dim", "depth", "rank"])
def test_evaluate_refuses_points_outside_the_model(capsys, reference_run, tmp_path, flags, expected):
    message = failure(capsys, ["evaluate", "--model", str(reference_run["ckpt"]), "--tasks", "lee",
                               "--out", str(tmp_path / "out"), *flags])
    assert expected in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--dim", "33"], "--dim 33 is outside [1, 32]"),
    (["--depth", "0"], "--depth 0 is outside [1, 2]"),
    (["--rank", "33"], "--rank 33 is outside [1, 32]"),
], ids=["dim", "depth", "rank"])
def test_export_refuses_points_outside_the_model(capsys, reference_run, tmp_path, flags, expected):
    message = failure(capsys, ["export", "--ckpt", str(reference_run["ckpt"]), "--out", str(tmp_path / "e"), *flags])
    assert expected in message
    assert not (tmp_path / "e").exists()


def test_an_untrained_point_inside_the_range_is_allowed_with_one_warning(reference_run, tmp_path):
    import mlembed

    with pytest.warns(UserWarning, match=r"--rank 12 was never trained: this model was trained at ranks 8, 16, 32"):
        assert main(["export", "--ckpt", str(reference_run["ckpt"]), "--out", str(tmp_path / "e"),
                     "--mode", "efficiency", "--rank", "12"]) == 0
    with pytest.warns(UserWarning, match=r"dim 12 was never trained: this model was trained at dims 8, 16, 32"):
        model = mlembed.load(reference_run["ckpt"], dim=12)
    assert model.encode(["a text"]).shape == (1, 12)
    with pytest.warns(UserWarning, match=r"rank 24 was never trained: this model was trained at ranks 8, 16, 32"):
        model.encode(["a text"], rank=24, depth=1)
    for point, expected in [({"dim": 13}, "dim 13 is outside [1, 12]"), ({"depth": 3}, "depth 3 is outside [1, 2]"),
                            ({"rank": 64}, "rank 64 is outside [1, 32]")]:
        with pytest.raises(ValueError, match=re.escape(expected)):
            model.encode(["a text"], **point)
    with pytest.raises(ValueError, match=re.escape("--dim 40 is outside [1, 32]")):
        mlembed.load(reference_run["ckpt"], dim=40)
    served = model.encode(["a text"], rank=16, depth=2, dim=8)  # per call, from the same weights
    assert torch.allclose(served, mlembed.load(reference_run["ckpt"], rank=16, dim=8).encode(["a text"]), atol=1e-6)


def test_the_grid_refuses_a_dim_wider_than_the_vectors():
    from mlembed.evaluation.grid import evaluate_grid
    from tests.evaluation.conftest import TinyEncoder
    from tests.evaluation.test_grid import small_tasks

    encoder = TinyEncoder()
    with pytest.raises(ValueError, match=re.escape("--dims 64 is outside [1, 32] (the model's embedding size)")):
        evaluate_grid(encoder, small_tasks(), dims=[8, 64], progress=False)
    assert not encoder.layer_calls  # refused before any scoring
