"""A fit killed mid stage 1 or mid stage 2 resumes from last.ckpt with the uninterrupted run's losses, stages
and MEL ranks."""

from __future__ import annotations

import pytest

from mlembed.cli import main
from tests.robustness.callbacks import SimulatedKill, read_steps
from tests.robustness.conftest import STEPS
from tests.robustness.tiny_run import callback, checkpoint_every_step, fit_args, record_steps


def run_killed_then_resumed(shards, root, kill_step: int, *extra: str) -> list[dict]:
    """Fit until KillAt(kill_step) fires, then fit again from last.ckpt; the steps both runs recorded."""
    steps, ckpt = root / "steps.jsonl", root / "ckpt"
    common = [*STEPS, record_steps(steps), checkpoint_every_step(ckpt), *extra]
    with pytest.raises(SimulatedKill):
        main(fit_args(shards, root, *common, callback("tests.robustness.callbacks.KillAt", step=kill_step)))
    assert len(read_steps(steps)) == kill_step
    main(fit_args(shards, root, *common, f"--ckpt_path={ckpt / 'last.ckpt'}"))
    return read_steps(steps)


@pytest.mark.parametrize("kill_step, extra", [
    (3, []),
    (7, []),
    # manual optimization (its own optimizer and scheduler steps) resumes too, and caching changes no loss
    (7, ["--model.grad_cache.chunk_size=2"]),
], ids=["mid-stage1", "mid-stage2", "mid-stage2-grad-cache"])
def test_resume_continues_the_uninterrupted_run(tiny_shards, reference_run, tmp_path, kill_step, extra):
    reference = reference_run["steps"]
    resumed = run_killed_then_resumed(tiny_shards, tmp_path, kill_step, *extra)
    assert [r["step"] for r in resumed] == list(range(len(reference)))
    assert [r["stage"] for r in resumed] == [r["stage"] for r in reference]
    assert [r["rank"] for r in resumed] == [r["rank"] for r in reference]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in reference], rel=1e-4, abs=1e-5)


def test_reference_run_crosses_both_stages_and_samples_ranks(reference_run):
    # Guards the test above against a degenerate schedule (one stage, one rank) that would make it vacuous.
    steps = reference_run["steps"]
    assert [r["stage"] for r in steps] == [1] * 5 + [2] * 5
    assert len({r["rank"] for r in steps}) > 1
