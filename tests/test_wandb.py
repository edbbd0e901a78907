"""A tiny fit with the wandb preset and WANDB_MODE=offline: the offline run holds the per-axis metrics, the
grid table and the resolved CLI config."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

import mlembed.cli
import mlembed.cli.train
from mlembed.wandb_config import WandbSaveConfig, flatten
from tests.robustness.tiny_run import ROOT, build_shards, callback, fit_args

BLOCK, HEADER = 32768, 7
"""The .wandb file is a LevelDB-style log: 32 KiB blocks of records, each with a 7-byte header."""


def wandb_records(path: Path):
    """The protobuf Records of an offline run's ``run-*.wandb`` file (wandb 0.31 ships no Python reader)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, parts = HEADER, []  # the file header (":W&B", magic, version) is as long as a record header
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if left < HEADER or (kind == 0 and length == 0):  # block trailer padding
            pos += left
            continue
        parts.append(data[pos + HEADER : pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def read_offline_run(save_dir: Path) -> dict:
    """History keys (with their last values), config and file names of the one offline run under save_dir."""
    (run_file,) = save_dir.glob("wandb/offline-run-*/run-*.wandb")
    history, config, files = {}, {}, set()
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "files":
            files.update(f.path for f in record.files.files)
    return {"history": history, "config": config, "files": files}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("wandb")
    shards = build_shards(root / "shards")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(root / "home"))  # nothing written to the user's home
        patch.setenv("WANDB_MODE", "offline")
        grid = callback("mlembed.callbacks.grid.GridEvaluation", tasks=["lee"], caps={"max_sts_pairs": 100},
                        plots=True)
        mlembed.cli.main(fit_args(shards, root, "--config", str(ROOT / "callbacks/wandb.yaml"),
                                  f"--trainer.logger.init_args.save_dir={root}", grid))
        wandb.finish()  # flush: a user's process does this at exit
    return read_offline_run(root)


def test_per_axis_training_metrics_are_logged(offline_run):
    history = offline_run["history"]
    expected = {"train/loss", "train/mel_rank", "train/stage", "val/loss", "train/loss/mrl@8", "train/loss/mrl@32",
                "train/loss/mll@1", "train/loss/mll@2"}
    assert expected <= set(history), f"missing {expected - set(history)}"
    assert history["train/stage"] == 2, history  # the last step is in stage 2


def test_the_grid_table_plots_and_score_are_logged_as_wandb_objects(offline_run):
    history, files = offline_run["history"], offline_run["files"]
    assert history["grid/table/_type"] == "table-file" and history["grid/table/nrows"] >= 3 * 2 * 3  # ranks x depths x dims
    assert history["grid/plots/count"] >= 1
    assert -1 <= history["grid/score"] <= 1  # Lee STS Spearman at the full point
    assert any(f.startswith("media/table/grid/table") for f in files)
    assert any(f.startswith("media/images/grid/plots") and f.endswith(".png") for f in files)


def test_the_resolved_cli_config_is_in_the_run(offline_run):
    config = {k: v.get("value") if isinstance(v, dict) else v for k, v in offline_run["config"].items()}
    assert config["model.mel.enabled"] is True  # the same flat key a sweep sets
    assert config["data.init_args.stage1.steps"] == 3
    assert config["trainer.max_steps"] == -1 and config["seed_everything"] == 0
    assert "config.yaml" in offline_run["files"]


def test_flatten_keeps_lists_as_values():
    assert flatten({"a": {"b": 1, "c": [1, {"d": 2}]}, "e": {}}) == {"a.b": 1, "a.c": [1, {"d": 2}], "e": {}}


def test_the_cli_saves_its_config_through_the_wandb_aware_callback():
    cli = mlembed.cli.train.lightning_main(["--config", str(ROOT / "configs/tiny_bert.yaml")], run=False)
    assert cli.save_config_callback is WandbSaveConfig


def test_a_resumed_fit_continues_its_wandb_run(tmp_path):
    """Killed and resumed with --ckpt_path, the fit logs to the same wandb run (the same id, resume="allow"):
    the server keeps one run instead of two."""
    from tests.robustness.callbacks import SimulatedKill
    from tests.robustness.tiny_run import checkpoint_every_step

    shards = build_shards(tmp_path / "shards")
    common = ["--config", str(ROOT / "callbacks/wandb.yaml"), f"--trainer.logger.init_args.save_dir={tmp_path}",
              checkpoint_every_step(tmp_path / "ckpt")]
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(tmp_path / "home"))
        patch.setenv("WANDB_MODE", "offline")
        with pytest.raises(SimulatedKill):
            mlembed.cli.main(fit_args(shards, tmp_path, *common, callback("tests.robustness.callbacks.KillAt", step=2)))
        wandb.finish()
        assert mlembed.cli.main(fit_args(shards, tmp_path, *common,
                                         f"--ckpt_path={tmp_path / 'ckpt' / 'last.ckpt'}")) == 0
        wandb.finish()
    runs = sorted(tmp_path.glob("wandb/offline-run-*"))
    assert len(runs) == 2  # one offline directory per process; `wandb sync` sends both to one run
    assert len({run.name.rsplit("-", 1)[1] for run in runs}) == 1  # the same run id
