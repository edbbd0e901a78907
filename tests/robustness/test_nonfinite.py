"""A NaN loss stops the fit with a message naming the step, or is skipped and counted; no checkpoint is corrupt."""

from __future__ import annotations

import csv

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


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    """Nested state dicts ``a`` and ``b`` hold the same keys and bit-identical tensors and values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{path} changed"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def adam_steps(snapshot: dict) -> set[float]:
    """The AdamW step counts of every parameter in a SnapshotAround snapshot."""
    return {float(state["step"]) for state in snapshot["optimizer"]["state"].values()}


def test_nan_loss_is_skipped_and_counted(tiny_shards, reference_run, tmp_path):
    snapshots = tmp_path / "snapshots"
    # Training batch POISON_STEP is the poisoned one; SnapshotAround runs after PoisonAt, which restores the
    # poisoned weight at the end of that batch, so "after" holds whatever the skipped step left behind.
    main(poisoned_fit(tiny_shards, tmp_path, "--model.on_nonfinite=skip",
                      callback("tests.robustness.callbacks.SnapshotAround", batch=POISON_STEP,
                               dirpath=str(snapshots))))
    steps = read_steps(tmp_path / "steps.jsonl")
    skipped = [r for r in steps if r["loss"] is None]
    assert len(skipped) == 1
    assert steps.index(skipped[0]) == POISON_STEP  # the poisoned step, and no other
    # Until the NaN the run is the reference run.
    good = [r["loss"] for r in steps[:POISON_STEP]]
    assert good == pytest.approx([r["loss"] for r in reference_run["steps"][:POISON_STEP]], rel=1e-5)
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in steps if r is not skipped[0])

    # The skipped step changed no weight and no optimizer state (AdamW moments and step counts).
    before, after, following = (torch.load(snapshots / name, map_location="cpu", weights_only=False)
                                for name in ("before.pt", "after.pt", "next.pt"))
    assert_same_state(before["model"], after["model"], "model")
    assert_same_state(before["optimizer"]["state"], after["optimizer"]["state"], "optimizer.state")
    no_lr = [{k: v for k, v in group.items() if k != "lr"} for group in before["optimizer"]["param_groups"]]
    assert no_lr == [{k: v for k, v in group.items() if k != "lr"} for group in after["optimizer"]["param_groups"]]
    assert all(torch.isfinite(v).all() for v in after["model"].values() if v.is_floating_point())
    # ... while the next (finite) step did change them: the snapshots see an update when there is one.
    changed = [k for k in before["model"] if not torch.equal(before["model"][k], following["model"][k])]
    assert "encoder.backbone.model.embeddings.word_embeddings.A" in changed
    assert adam_steps(before) == adam_steps(after) == {float(POISON_STEP)}  # three updates before, none since
    assert adam_steps(following) == {POISON_STEP + 1.0}

    # Counted exactly once: the module's counter, and the logged column (1 from the skipped step on).
    assert (before["nonfinite_skipped"], after["nonfinite_skipped"], following["nonfinite_skipped"]) == (0, 1, 1)
    assert_finite_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    metrics = next(tmp_path.glob("lightning_logs/version_*/metrics.csv"))
    assert "train/nonfinite_skipped" in metrics.read_text().splitlines()[0]
    rows = list(csv.DictReader(metrics.open()))
    counted = {int(r["step"]): float(r["train/nonfinite_skipped"]) for r in rows if r["train/nonfinite_skipped"]}
    assert min(counted) == POISON_STEP and set(counted.values()) == {1.0}
