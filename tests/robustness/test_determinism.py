"""The same seed gives the same first 10 losses twice through the CLI."""

from __future__ import annotations

from mlembed.cli import main
from tests.robustness.callbacks import read_steps
from tests.robustness.conftest import STEPS
from tests.robustness.tiny_run import fit_args, record_steps


def test_same_seed_same_first_ten_losses(tiny_shards, reference_run, tmp_path):
    main(fit_args(tiny_shards, tmp_path, *STEPS, record_steps(tmp_path / "steps.jsonl")))
    again = read_steps(tmp_path / "steps.jsonl")
    assert len(again) == 10
    # Bit-for-bit: same process, same CPU kernels, no dropout, seeded data and ranks.
    assert [r["loss"] for r in again] == [r["loss"] for r in reference_run["steps"]]
    assert [r["rank"] for r in again] == [r["rank"] for r in reference_run["steps"]]
