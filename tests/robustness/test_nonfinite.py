"""A NaN loss stops the fit with a message naming the step, or is skipped and counted; no checkpoint is corrupt."""

from __future__ import annotations

import pytest
import torch

from mlembed.cli import main
from mlembed.loading import load_checkpoint
from tests.robustness.callbacks import read_steps
from tests.robustness.tiny_run import callback, checkpoint_every_step, fit_args, record_steps

POISON_STEP = 3
STEPS = ["--data.stage1.steps=3", "--data.stage2.steps=2"]
"""Five steps, the NaN in the first step of stage 2; the first three match the reference run's."""


def poisoned_fit(shards, root, *extra: str) -> list[str]:
    return fit_args(shards, root, *STEPS, checkpoint_every_step(root / "ckpt"), record_steps(root / "steps.jsonl"),
                    callback("tests.robustness.callbacks.PoisonAt", step=POISON_STEP), *extra)


def assert_finite_checkpoint(path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    load_checkpoint(path)  # and it still loads as a model


def test_nan_loss_raises_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_shards, tmp_path):
    with pytest.raises(FloatingPointError, match=rf"non-finite training loss \(nan\) at step {POISON_STEP}\b"):
        main(poisoned_fit(tiny_shards, tmp_path))
    assert len(read_steps(tmp_path / "steps.jsonl")) == POISON_STEP  # nothing recorded for the bad step
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == POISON_STEP  # the checkpoint of the steps before the NaN
    assert_finite_checkpoint(tmp_path / "ckpt" / "last.ckpt")


def test_nan_loss_is_skipped_and_counted(tiny_shards, reference_run, tmp_path):
    main(poisoned_fit(tiny_shards, tmp_path, "--model.on_nonfinite=skip"))
    steps = read_steps(tmp_path / "steps.jsonl")
    skipped = [r for r in steps if r["loss"] is None]
    assert len(skipped) == 1
    # Until the NaN the run is the reference run; the skipped step changed no weight.
    good = [r["loss"] for r in steps[:POISON_STEP]]
    assert good == pytest.approx([r["loss"] for r in reference_run["steps"][:POISON_STEP]], rel=1e-5)
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in steps if r is not skipped[0])
    assert_finite_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    metrics = next(tmp_path.glob("lightning_logs/version_*/metrics.csv")).read_text()
    assert "train/nonfinite_skipped" in metrics.splitlines()[0]
