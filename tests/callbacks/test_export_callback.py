"""ModelExport through the CLI: tiny fits stacking callbacks/export.yaml (and callbacks/wandb.yaml, offline).

The export written at the end of fit must encode like the module that fit ended with, and the offline wandb run
must record it as a ``model`` artifact (and must not when ``log_artifact`` is off).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import wandb

import mlembed
from mlembed.artifact import FACTORIZED_WEIGHTS, ExportManifest
from mlembed.callbacks import ModelExport
from mlembed.cli.train import lightning_main
from mlembed.data.manifest import ShardManifest
from tests.distributed.common import launch
from tests.helpers import POSITIVES, QUERIES
from tests.robustness.tiny_run import ROOT, build_shards, callback, fit_args, record_steps
from tests.test_wandb import wandb_records

TEXTS = QUERIES + POSITIVES
WANDB = ("--config", str(ROOT / "callbacks/wandb.yaml"))
EXPORT = ("--config", str(ROOT / "callbacks/export.yaml"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    return build_shards(tmp_path_factory.mktemp("export_shards"))


def offline_fit(root: Path, shards: dict[str, Path], *extra: str):
    """A tiny CLI fit with the wandb preset, offline, everything under ``root``; returns the trained module."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(root / "home"))  # artifact staging lands here, not in the user's home
        patch.setenv("WANDB_MODE", "offline")
        try:
            cli = lightning_main(fit_args(shards, root, *WANDB, f"--trainer.logger.init_args.save_dir={root}", *extra))
        finally:
            wandb.finish()  # flush the run; the next fit starts a new one instead of reusing it
    return cli.model


def artifact_records(root: Path) -> list:
    """The artifact records of the one offline run under ``root``."""
    (run_file,) = root.glob("wandb/offline-run-*/run-*.wandb")
    return [r.artifact for r in wandb_records(run_file) if r.WhichOneof("record_type") == "artifact"]


@pytest.fixture(scope="module")
def preset_run(shards, tmp_path_factory) -> dict:
    """The export preset as shipped (both modes, full point) stacked onto the tiny config and the wandb preset."""
    root = tmp_path_factory.mktemp("export_preset")
    module = offline_fit(root, shards, *EXPORT)
    return {"root": root, "module": module}


def test_the_preset_exports_both_modes_that_encode_like_the_trained_module(preset_run, shards):
    root, module = preset_run["root"], preset_run["module"]
    (export,) = (root / "export").iterdir()  # the default with wandb: save_dir/export/<run id>, one per run
    assert export.name.isalnum() and len(export.name) >= 6  # a wandb run id
    expected = module.encoder.encode(TEXTS)
    for mode in ("compat", "efficiency"):
        manifest = ExportManifest.read(export / mode)
        assert (manifest.mode, manifest.rank, manifest.depth, manifest.dim) == (mode, 32, 2, 32)
        got = mlembed.load(export / mode).encode(TEXTS)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        # The card, from the run in memory: its data (the shards' manifests) and the steps it took.
        card = (export / mode / "README.md").read_text()
        assert "- optimizer steps taken: 6\n" in card
        for number, stage in ((1, "stage1"), (2, "stage2")):
            for source, info in ShardManifest.load(shards[stage]).sources().items():
                assert f"| {number} | {source} | {info['task']} | {info['samples']:,} |" in card


def test_the_export_is_logged_as_a_wandb_model_artifact(preset_run):
    (artifact,) = artifact_records(preset_run["root"])
    assert (artifact.name, artifact.type) == ("mlembed-model", "model")
    assert json.loads(artifact.metadata) == {"rank": 32, "depth": 2, "dim": 32, "mode": ["compat", "efficiency"],
                                             "global_step": 6}
    files = {entry.path: entry for entry in artifact.manifest.contents}
    assert {"compat/model.safetensors", "compat/mlembed.json", "compat/modules.json", "efficiency/mlembed.json",
            f"efficiency/{FACTORIZED_WEIGHTS}"} <= set(files)
    # offline, wandb stages a copy of every file for a later `wandb sync`
    staged = files[f"efficiency/{FACTORIZED_WEIGHTS}"]
    assert Path(staged.local_path).stat().st_size == staged.size > 0


def test_one_mode_at_a_smaller_point_and_no_artifact_when_log_artifact_is_off(shards, tmp_path):
    out = tmp_path / "point"
    module = offline_fit(tmp_path, shards, callback("mlembed.callbacks.ModelExport", out_dir=str(out),
                                                    mode="efficiency", rank=16, depth=1, dim=16, log_artifact=False))
    manifest = ExportManifest.read(out)  # a single mode is written into out_dir itself
    assert (manifest.mode, manifest.rank, manifest.depth, manifest.dim) == ("efficiency", 16, 1, 16)
    got = mlembed.load(out).encode(TEXTS)
    torch.testing.assert_close(got, module.encoder.encode(TEXTS, rank=16, depth=1, dim=16), atol=1e-5, rtol=1e-4)
    assert artifact_records(tmp_path) == []  # the run exists (the glob found it) but holds no artifact


@pytest.mark.distributed
def test_under_fsdp_the_export_holds_the_whole_weights(tmp_path):
    """Two gloo ranks, FSDP with sharded checkpoints: the export equals what the sharded model embedded."""
    launch("export_worker.py", tmp_path)
    probe = torch.load(tmp_path / "probe.pt", weights_only=False)["embeddings"]
    for mode in ("compat", "efficiency"):
        torch.testing.assert_close(mlembed.load(tmp_path / "export" / mode).embed(QUERIES), probe,
                                   atol=1e-5, rtol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "probe.pt"]  # the gathered checkpoint is gone


@pytest.mark.parametrize("init_args, match", [
    ({"rank": 64}, r"ModelExport rank 64 is outside \[1, 32\] \(the trained maximum rank\)"),
    ({"depth": 3}, r"ModelExport depth 3 is outside \[1, 2\] \(the model's number of layers\)"),
    ({"out_dir": "EXISTING"}, r"ModelExport out_dir: .* exists and is not empty"),
])
def test_a_bad_init_arg_stops_the_run_before_training(shards, tmp_path, init_args, match):
    if init_args.get("out_dir") == "EXISTING":
        (tmp_path / "existing").mkdir()
        (tmp_path / "existing" / "old.txt").write_text("an earlier export")
        init_args = {"out_dir": str(tmp_path / "existing")}
    steps = tmp_path / "steps.jsonl"
    args = fit_args(shards, tmp_path, "--trainer.logger=false", record_steps(steps),
                    callback("mlembed.callbacks.ModelExport", **init_args))
    with pytest.raises((ValueError, FileExistsError), match=match):
        lightning_main(args)
    assert not steps.exists()  # not one training step ran


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "onnx"}, "mode"),
    ({"mode": ["compat", "compat"]}, "mode"),
    ({"dim": 0}, "dim"),
    ({"artifact_name": "my model!"}, "artifact_name"),
])
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=f"ModelExport {match}"):
        ModelExport(**kwargs)
