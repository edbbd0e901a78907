"""Shared fixture of the robustness tests: one uninterrupted reference run (10 steps) on ``tiny_shards``."""

from __future__ import annotations

import pytest

from mlembed.cli import main
from tests.robustness.callbacks import read_steps
from tests.robustness.tiny_run import checkpoint_every_step, fit_args, record_steps

STEPS = ["--data.stage1.steps=5", "--data.stage2.steps=5"]
"""Five steps per stage: the kills land inside stage 1 and inside stage 2."""


@pytest.fixture(scope="session")
def reference_run(tiny_shards, tmp_path_factory) -> dict:
    """One uninterrupted 10-step fit: its per-step records and its checkpoint directory."""
    root = tmp_path_factory.mktemp("reference")
    steps = root / "steps.jsonl"
    main(fit_args(tiny_shards, root, *STEPS, record_steps(steps), checkpoint_every_step(root / "ckpt")))
    return {"steps": read_steps(steps), "ckpt": root / "ckpt" / "last.ckpt", "root": root}
