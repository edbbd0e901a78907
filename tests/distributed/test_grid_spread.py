"""Evaluation with every process taking part equals one process's evaluation.

- ``GridEvaluation`` under 2-process DDP and 2-process FSDP (CPU, gloo, per-layer units, sharded checkpoints):
  the baseline grid (the starting weights) equals a 1-process fit's baseline grid, and the final grid equals a
  1-process evaluation of the run's own last checkpoint.
- ``torchrun --nproc_per_node=2 -m mlembed evaluate`` writes the grid that ``python -m mlembed evaluate`` writes.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mlembed
from mlembed.demo.tasks import build_tasks
from mlembed.evaluation.grid import evaluate_grid
from mlembed.evaluation.suite import EvalCaps
from tests.distributed.common import environment
from tests.robustness.tiny_run import ROOT, callback, checkpoint_every_step, fit_args

pytestmark = pytest.mark.distributed

FIXTURE = ROOT / "tests" / "fixtures" / "checkpoint_v1.ckpt"
CAPS = {"max_sts_pairs": 60}
FSDP = "--trainer.strategy=" + json.dumps({
    "class_path": "mlembed.strategies.CPUFSDPStrategy",
    "init_args": {"state_dict_type": "sharded", "process_group_backend": "gloo",
                  "auto_wrap_policy": {"class_path": "mlembed.strategies.TransformerLayerPolicy"}},
})
STRATEGIES = {"1 process": [], "ddp": ["--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.devices=2"],
              "fsdp": [FSDP, "--trainer.devices=2"]}


def read_grid(path: Path) -> dict[tuple, float]:
    """``{(rank, depth, dim, task, metric): value}`` of a grid.csv."""
    with open(path) as handle:
        return {(r["rank"], r["depth"], r["dim"], r["task"], r["metric"]): float(r["value"])
                for r in csv.DictReader(handle)}


def assert_same_grid(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and len(want) == 3 * 2 * 3 * 2  # ranks x depths x dims x 2 metrics of lee
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key


@pytest.fixture(scope="module")
def fits(tiny_shards, tmp_path_factory) -> dict[str, Path]:
    """The tiny config fitted (2 + 2 steps) with the grid callback, on each strategy; their directories."""
    roots = {}
    for name, flags in STRATEGIES.items():
        root = tmp_path_factory.mktemp(name.replace(" ", "_"))
        grid = callback("mlembed.callbacks.grid.GridEvaluation", tasks=["lee"], caps=CAPS, plots=False,
                        baseline=True, out_dir=str(root / "grid"))
        args = fit_args(tiny_shards, root, grid, checkpoint_every_step(root / "ckpt"), "--data.stage1.steps=2",
                        "--data.stage2.steps=2", *flags)
        done = subprocess.run([sys.executable, "-m", "mlembed", *args], cwd=root, env=environment(),
                              capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, f"{name}: {done.stderr[-4000:]}"
        roots[name] = root
    return roots


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_baseline_grid_of_two_processes_equals_one_process(fits, strategy):
    assert_same_grid(read_grid(fits[strategy] / "grid" / "baseline" / "grid.csv"),
                     read_grid(fits["1 process"] / "grid" / "baseline" / "grid.csv"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_final_grid_of_two_processes_equals_one_process_scoring_the_checkpoint(fits, strategy, tmp_path):
    checkpoint = fits[strategy] / "ckpt" / "last.ckpt"  # a sharded directory under FSDP
    assert checkpoint.is_dir() == (strategy == "fsdp")
    tasks = build_tasks(["lee"], caps=EvalCaps(**CAPS))
    evaluate_grid(mlembed.load(checkpoint), tasks, progress=False).write_csv(tmp_path / "grid.csv")
    final = read_grid(fits[strategy] / "grid" / "grid.csv")
    assert_same_grid(final, read_grid(tmp_path / "grid.csv"))
    assert final != read_grid(fits[strategy] / "grid" / "baseline" / "grid.csv")  # training moved the scores


def test_evaluate_under_torchrun_writes_the_single_process_grid(tmp_path):
    flags = ["evaluate", "--model", str(FIXTURE), "--grid", "--tasks", "lee", "--max-sts-pairs", "45", "--no-plots"]
    single = subprocess.run([sys.executable, "-m", "mlembed", *flags, "--out", str(tmp_path / "one")], cwd=ROOT,
                            env=environment(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    spread = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "mlembed", *flags, "--out", str(tmp_path / "two")], cwd=ROOT, env=environment(),
                            capture_output=True, text=True, timeout=300)
    assert spread.returncode == 0, spread.stderr[-3000:]
    got, want = read_grid(tmp_path / "two" / "grid.csv"), read_grid(tmp_path / "one" / "grid.csv")
    assert got.keys() == want.keys() and len(want) == 2 * 2 * 2 * 2  # ranks 4/8, depths 1/2, dims 4/8; 2 metrics
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
