"""``python -m mlembed fit`` on 2 CPU processes (DDP, gloo) with the wandb, export and grid callbacks stacked.

Rank-0-only work (saving the config into wandb, the evaluation grid, the export) must not leave the other rank
waiting in a collective: a regression shows as a timeout here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import mlembed
from tests.robustness.tiny_run import ROOT, build_shards, callback, fit_args

pytestmark = pytest.mark.distributed


def test_ddp_fit_with_wandb_grid_and_export_presets_finishes(tmp_path):
    shards = build_shards(tmp_path / "shards")
    grid = callback("mlembed.callbacks.grid.GridEvaluation", tasks=["lee"], caps={"max_sts_pairs": 60},
                    plots=False, baseline=True, out_dir=str(tmp_path / "grid"))
    args = fit_args(shards, tmp_path, "--config", str(ROOT / "callbacks/wandb.yaml"),
                    "--config", str(ROOT / "callbacks/export.yaml"), grid,
                    f"--trainer.logger.init_args.save_dir={tmp_path}",
                    "--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.devices=2",
                    "--data.stage1.steps=2", "--data.stage2.steps=2")
    home = str(tmp_path / "home")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_CACHE_DIR": home,
           "WANDB_CONFIG_DIR": home, "WANDB_DATA_DIR": home}
    done = subprocess.run([sys.executable, "-m", "mlembed", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "grid" / "grid.csv").is_file() and (tmp_path / "grid" / "comparison.csv").is_file()
    (export,) = (tmp_path / "export").iterdir()  # export/<wandb run id>
    manifest = json.loads((export / "compat" / "mlembed.json").read_text())
    assert manifest  # the export finished on rank 0 ...
    model = mlembed.load(export / "efficiency")
    assert model.encode(["hello", "world"]).shape[0] == 2  # ... and loads
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
