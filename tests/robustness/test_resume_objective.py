"""Resuming a fit must not change the training objective in silence, nor drop the tail of the last stage."""

from __future__ import annotations

import re

import pytest
import torch

from mlembed.cli import main
from mlembed.cli.train import optimizer_steps
from tests.helpers import failure
from tests.robustness.callbacks import read_steps
from tests.robustness.conftest import STEPS
from tests.robustness.tiny_run import fit_args, record_steps

CHANGES = {
    "mrl dims": (["--model.mrl.dims=[16, 32]"], r"--model\.mrl\.dims: \[8, 16, 32\] in the checkpoint, \[16, 32\] now"),
    "mll layers": (["--model.mll.layers=[2]"], r"--model\.mll\.layers: None in the checkpoint, \[2\] now"),
    "mel ranks": (["--model.mel.ranks=[16, 32]"], r"--model\.mel\.ranks: \[8, 16, 32\] in the checkpoint, \[16, 32\] now"),
    "temperature": (["--model.loss.temperature=0.1"], r"--model\.loss\.temperature: 0\.05 in the checkpoint, 0\.1 now"),
    "mrl weights": (["--model.mrl.weights=[1.0, 1.0, 1.0]"], r"--model\.mrl\.weights: None in the checkpoint"),
    "negatives": (["--data.stage2.num_negatives={retrieval: 3}"],
                  r"--data\.stage2\.num_negatives\.retrieval: 1 in the checkpoint, 3 now"),
    "instructions": (["--data.stage2.instructions=false"],
                     r"--data\.stage2\.instructions: True in the checkpoint, False now"),
}


@pytest.mark.parametrize("case", CHANGES, ids=list(CHANGES))
def test_resume_with_a_changed_objective_is_refused_naming_the_flag(capsys, tiny_shards, reference_run, tmp_path,
                                                                    case):
    flags, expected = CHANGES[case]
    message = failure(capsys, fit_args(tiny_shards, tmp_path, *STEPS, *flags,
                                       f"--ckpt_path={reference_run['ckpt']}"))
    assert re.search(expected, message), message
    assert str(reference_run["ckpt"]) in message and "--allow_objective_change=true" in message


def test_every_changed_flag_is_named_at_once(capsys, tiny_shards, reference_run, tmp_path):
    message = failure(capsys, fit_args(tiny_shards, tmp_path, *STEPS, "--model.loss.temperature=0.1",
                                       "--model.mrl.dims=[16, 32]", f"--ckpt_path={reference_run['ckpt']}"))
    assert "--model.loss.temperature" in message and "--model.mrl.dims" in message


def test_a_changed_objective_resumes_when_the_user_says_so(tiny_shards, reference_run, tmp_path):
    steps = tmp_path / "steps.jsonl"
    args = fit_args(tiny_shards, tmp_path, "--data.stage1.steps=5", "--data.stage2.steps=6",
                    "--model.loss.temperature=0.1", "--allow_objective_change=true", record_steps(steps),
                    f"--ckpt_path={reference_run['ckpt']}")
    assert main(args) == 0
    assert [row["step"] for row in read_steps(steps)] == [10]  # one more step, after the checkpoint's ten


def test_a_checkpoint_without_settings_is_not_resumed_unchecked(capsys, tiny_shards, reference_run, tmp_path):
    checkpoint = torch.load(reference_run["ckpt"], map_location="cpu", weights_only=False)
    del checkpoint["hyper_parameters"]
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    message = failure(capsys, fit_args(tiny_shards, tmp_path / "a", *STEPS, f"--ckpt_path={bare}"))
    assert f"--ckpt_path {bare} holds no saved settings" in message and "--allow_objective_change=true" in message
    assert main(fit_args(tiny_shards, tmp_path / "b", *STEPS, "--allow_objective_change=true",
                         f"--ckpt_path={bare}")) == 0


def test_resume_with_the_same_settings_is_accepted(tiny_shards, reference_run, tmp_path):
    assert main(fit_args(tiny_shards, tmp_path, *STEPS, f"--ckpt_path={reference_run['ckpt']}")) == 0


@pytest.mark.parametrize("batches, accumulate, steps", [(6, 2, 3), (5, 2, 3), (3, 4, 1), (7, 1, 7)])
def test_optimizer_steps_cover_every_batch(batches, accumulate, steps):
    assert optimizer_steps(batches, accumulate) == steps


def test_accumulation_trains_the_last_batch_of_an_uneven_stage(capsys, tiny_shards, tmp_path):
    # 3 batches, 2 per optimizer step: the third batch used to be dropped (max_steps = 3 // 2 = 1).
    steps = tmp_path / "steps.jsonl"
    assert main(fit_args(tiny_shards, tmp_path, "--data.stage1.steps=2", "--data.stage2.steps=1",
                         "--trainer.accumulate_grad_batches=2", record_steps(steps))) == 0
    rows = read_steps(steps)
    assert [row["stage"] for row in rows] == [1, 1, 2]  # every batch trained, stage 2's included
    assert rows[-1]["step"] == 1  # in two optimizer steps
    assert "the last of the 2 optimizer steps accumulates 1 batches" in capsys.readouterr().out


def test_a_checkpoint_from_before_a_new_loss_setting_still_resumes(tiny_shards, reference_run, tmp_path):
    """A checkpoint saved before ``kd_feature_weight`` existed trained with it off: resuming it is no change."""
    checkpoint = torch.load(reference_run["ckpt"], map_location="cpu", weights_only=False)
    loss = checkpoint["hyper_parameters"]["loss"]
    assert isinstance(loss, dict) and loss.pop("kd_feature_weight") == 0.0
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    assert main(fit_args(tiny_shards, tmp_path, *STEPS, f"--ckpt_path={older}")) == 0
