"""``python -m mlembed fit`` under FSDP on 2 CPU processes (gloo): killed mid stage 2, it resumes from its sharded
checkpoint directory with the uninterrupted run's losses, stages and MEL ranks; a config with another axis set is
refused before any process starts.

Sharded checkpoints are what configs/trainer/fsdp.yaml writes, so this is the resume path of every multi-GPU job.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.distributed.common import environment
from tests.robustness.callbacks import read_steps
from tests.robustness.tiny_run import (
    callback,
    checkpoint_every_step,
    fit_args,
    record_steps,
)

pytestmark = pytest.mark.distributed

#: configs/trainer/fsdp.yaml's strategy (per-layer units, sharded checkpoints) with the class swapped for CPU.
STRATEGY = "--trainer.strategy=" + json.dumps({
    "class_path": "mlembed.strategies.CPUFSDPStrategy",
    "init_args": {"state_dict_type": "sharded", "process_group_backend": "gloo",
                  "auto_wrap_policy": {"class_path": "mlembed.strategies.TransformerLayerPolicy"}},
})
STEPS = ["--data.stage1.steps=3", "--data.stage2.steps=3", "--trainer.devices=2", STRATEGY]
KILL_STEP = 4  # inside stage 2


def fit(tiny_shards, root, *extra: str) -> subprocess.CompletedProcess:
    """One 2-process FSDP fit of the tiny config from a fresh interpreter (the launcher re-runs the command)."""
    args = fit_args(tiny_shards, root, *STEPS, *extra)
    return subprocess.run([sys.executable, "-m", "mlembed", *args], cwd=root, env=environment(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def killed(tiny_shards, tmp_path_factory):
    """A run killed before step KILL_STEP, with a sharded checkpoint after every step; its steps and last.ckpt."""
    root = tmp_path_factory.mktemp("killed")
    done = fit(tiny_shards, root, record_steps(root / "steps.jsonl"), checkpoint_every_step(root / "ckpt"),
               callback("tests.robustness.callbacks.KillAt", step=KILL_STEP))
    assert done.returncode != 0 and "SimulatedKill" in done.stderr, done.stderr[-3000:]
    last = root / "ckpt" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # sharded: one file per rank
    return root / "steps.jsonl", last


def resume_copy(killed, root):
    """A private copy of the killed run (its step records and checkpoint) under ``root``: tests append to it."""
    steps, last = killed
    shutil.copy(steps, root / "steps.jsonl")
    return root / "steps.jsonl", shutil.copytree(last, root / "last.ckpt")


def test_killed_fsdp_run_resumes_from_its_sharded_directory_as_if_never_stopped(tiny_shards, killed, tmp_path):
    reference = tmp_path / "reference.jsonl"
    done = fit(tiny_shards, tmp_path, record_steps(reference))
    assert done.returncode == 0, done.stderr[-3000:]
    steps, last = resume_copy(killed, tmp_path)
    done = fit(tiny_shards, tmp_path, record_steps(steps), f"--ckpt_path={last}")
    assert done.returncode == 0, done.stderr[-3000:]
    expected, resumed = read_steps(reference), read_steps(steps)
    assert [r["stage"] for r in expected] == [1, 1, 1, 2, 2, 2]
    assert [r["step"] for r in resumed] == list(range(6))
    assert [(r["stage"], r["rank"]) for r in resumed] == [(r["stage"], r["rank"]) for r in expected]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in expected], rel=1e-4, abs=1e-5)


def test_two_rank_shards_resume_on_one_process(tiny_shards, killed, tmp_path):
    # torch distributed checkpointing reshards on load: a job can come back on fewer (or more) devices.
    steps, last = resume_copy(killed, tmp_path)
    done = fit(tiny_shards, tmp_path, record_steps(steps), f"--ckpt_path={last}", "--trainer.devices=1")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_steps(steps)[KILL_STEP:]
    assert [(r["step"], r["stage"]) for r in rows] == [(4, 2), (5, 2)]
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in rows)  # trained, finite


def test_resuming_a_sharded_checkpoint_with_another_axis_set_is_refused(tiny_shards, killed, tmp_path):
    done = fit(tiny_shards, tmp_path, "--model.mrl.enabled=false", f"--ckpt_path={killed[1]}")
    assert done.returncode != 0
    assert "--model.mrl.enabled" in done.stderr and "last.ckpt" in done.stderr, done.stderr[-2000:]


def test_a_directory_that_is_not_a_sharded_checkpoint_is_named(tiny_shards, tmp_path):
    done = fit(tiny_shards, tmp_path, f"--ckpt_path={tmp_path}")
    assert done.returncode != 0
    assert f"--ckpt_path {tmp_path} is a directory but not a sharded Lightning checkpoint" in done.stderr


def test_a_chained_stage_starts_under_fsdp_from_a_sharded_checkpoint(tiny_shards, killed, tmp_path):
    """``--model.init_from`` takes the sharded directory FSDP writes: the next stage starts from the same weights
    as from Lightning's consolidated file, and from other weights than a fresh start."""
    from tests.distributed.test_fsdp import consolidate

    steps, last = resume_copy(killed, tmp_path)
    single = consolidate(last)
    first = {"fresh": read_steps(steps)[0]["loss"]}  # the killed run's first step: the same fit from scratch
    for name, extra in {"sharded": [f"--model.init_from={last}"], "consolidated": [f"--model.init_from={single}"]}.items():
        root = tmp_path / name
        root.mkdir()
        done = fit(tiny_shards, root, record_steps(root / "steps.jsonl"), *extra)
        assert done.returncode == 0, done.stderr[-3000:]
        first[name] = read_steps(root / "steps.jsonl")[0]["loss"]
    assert first["sharded"] == pytest.approx(first["consolidated"], rel=1e-5)
    assert first["sharded"] != pytest.approx(first["fresh"], rel=1e-3)
