"""Chained stages: each stage a fit with its own axes, data and learning-rate schedule, started from the last
stage's checkpoint with ``--model.init_from``. Where MEL turns on at stage 2, its first factors are the SVD of
the embedding as stage 1 left it; the schedule restarts its warmup; a stage resumes mid-way as if never stopped."""

from __future__ import annotations

import pytest
import torch

from mlembed.axes.mel import FactorizedEmbedding
from mlembed.cli import main
from tests.helpers import failure
from tests.robustness.callbacks import SimulatedKill, read_steps
from tests.robustness.tiny_run import callback, checkpoint_every_step, fit_args, record_steps

EMBEDDING = "model.embeddings.word_embeddings"
WARMUP = ["--model.optimizer.warmup_steps=2"]


def probe(path) -> str:
    return callback("tests.robustness.callbacks.StageProbe", path=str(path))


@pytest.fixture(scope="module")
def stage1(tiny_shards, tmp_path_factory) -> dict:
    """Stage 1: retrieval pre-heat with MEL off, 4 steps; its checkpoint and what it ended with."""
    root = tmp_path_factory.mktemp("stage1")
    assert main(fit_args(tiny_shards, root, "--data.stage1.steps=4", "--data.stage2.steps=0",
                         "--model.mel.enabled=false", *WARMUP, probe(root / "probe.pt"),
                         checkpoint_every_step(root / "ckpt"))) == 0
    return {"ckpt": root / "ckpt" / "last.ckpt", **torch.load(root / "probe.pt")}


def stage2_args(tiny_shards, root, stage1, *extra) -> list[str]:
    """Stage 2 (the fixture's stage-2 data as its only stage), MEL on, from stage 1's checkpoint."""
    return fit_args(tiny_shards, root, f"--data.stage1.shards=[{tiny_shards['stage2']}]", "--data.stage1.steps=4",
                    "--data.stage1.instructions=true", "--data.stage2.steps=0", "--model.mel.enabled=true",
                    f"--model.init_from={stage1['ckpt']}", *WARMUP, *extra)


def test_mel_turned_on_at_stage_2_starts_from_the_svd_of_the_trained_embedding(tiny_shards, tmp_path, stage1):
    assert main(stage2_args(tiny_shards, tmp_path, stage1, probe(tmp_path / "probe.pt"))) == 0
    stage2 = torch.load(tmp_path / "probe.pt")
    trained = stage1["end"][f"{EMBEDDING}.weight"]
    assert not torch.equal(trained, stage1["start"][f"{EMBEDDING}.weight"])  # stage 1 did train it
    expected = FactorizedEmbedding(*trained.shape, rank=32)
    expected.init_from(trained)
    for name in ("A", "B"):
        torch.testing.assert_close(stage2["start"][f"{EMBEDDING}.{name}"], getattr(expected, name), atol=1e-5, rtol=0)
    torch.testing.assert_close(stage2["start"][f"{EMBEDDING}.A"] @ stage2["start"][f"{EMBEDDING}.B"], trained,
                               atol=1e-4, rtol=0)  # rank 32 = the hidden size: the product is the matrix itself
    for key, value in stage1["end"].items():  # every other weight as stage 1 left it
        if not key.startswith(EMBEDDING):
            torch.testing.assert_close(stage2["start"][key], value, atol=0, rtol=0, msg=key)
    # The schedule restarts: warmup from 0 over 2 steps, then the cosine, in each stage alike.
    assert stage1["lr"][0] == stage2["lr"][0] < stage2["lr"][1] < stage2["lr"][2]
    assert stage2["lr"] == pytest.approx(stage1["lr"])


def test_a_stage_resumes_mid_way_as_if_never_stopped(tiny_shards, tmp_path, stage1):
    whole = tmp_path / "whole"
    assert main(stage2_args(tiny_shards, whole, stage1, record_steps(whole / "steps.jsonl"))) == 0
    cut = tmp_path / "cut"
    common = [record_steps(cut / "steps.jsonl"), checkpoint_every_step(cut / "ckpt")]
    cut.mkdir()
    with pytest.raises(SimulatedKill):
        main(stage2_args(tiny_shards, cut, stage1, *common, callback("tests.robustness.callbacks.KillAt", step=2)))
    assert main(stage2_args(tiny_shards, cut, stage1, *common, f"--ckpt_path={cut / 'ckpt' / 'last.ckpt'}")) == 0
    reference, resumed = read_steps(whole / "steps.jsonl"), read_steps(cut / "steps.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in reference] == [0, 1, 2, 3]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in reference], rel=1e-4, abs=1e-5)


def test_a_missing_earlier_stage_names_the_flag(capsys, tiny_shards, tmp_path):
    message = failure(capsys, fit_args(tiny_shards, tmp_path, "--data.stage1.steps=1", "--data.stage2.steps=0",
                                       f"--model.init_from={tmp_path / 'nope.ckpt'}"))
    assert f"--model.init_from: checkpoint {tmp_path / 'nope.ckpt'} does not exist" in message


def test_the_recipes_two_stage_commands_parse(capsys):
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "recipe.md").read_text(encoding="utf-8")
    block = page[page.index("### The paper's two stages"):]
    block = re.search(r"```text\n(.*?)```", block, flags=re.S)[1].replace("\\\n", " ")
    fits = [shlex.split(line) for line in block.splitlines() if line.startswith("python -m mlembed fit")]
    assert len(fits) == 2 and any(a.startswith("--model.init_from=") for a in fits[1])
    for argv in fits:
        argv = [a.replace("configs/", f"{root}/configs/", 1) if a.startswith("configs/") else a for a in argv[3:]]
        with pytest.raises(SystemExit) as stop:
            main([*argv, "--print_config"])
        assert stop.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "init_from: runs/qwen3_0.6b-stage1/lightning_logs/version_0/checkpoints/last.ckpt" in printed
