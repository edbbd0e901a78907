"""The shipped run configs train end to end through ``python -m mlembed fit``.

- all 8 on/off combinations of the axes run a step from the CLI, as a sweep agent writes the switches;
- configs/demo.yaml (real MiniLM, builds its own data, grid before and after) runs with ``--trainer.fast_dev_run``;
- configs/tiny_qwen3.yaml (the decoder path with the real Qwen3 tokenizer) trains through both stages.

The demo and tiny-Qwen3 runs start ``python -m mlembed`` as a subprocess in a scratch directory, so the relative
paths of the shipped configs (``data/demo``, ``runs/...``) resolve there, as they do for a user in the repo root.
"""

from __future__ import annotations

import csv
import itertools
import json
import re

import pytest
import torch
import yaml

from mlembed.cli import main
from mlembed.loading import load_checkpoint
from tests.conftest import run_cli
from tests.robustness.tiny_run import FIXTURES, ROOT, callback, checkpoint_every_step, fit_args

SWITCHES = list(itertools.product([True, False], repeat=3))
@pytest.mark.parametrize("mel, mll, mrl", SWITCHES, ids=lambda v: "on" if v else "off")
def test_every_axis_combination_trains_from_the_cli(tiny_shards, tmp_path, mel, mll, mrl):
    flags = [f"--model.mel.enabled={mel}", f"--model.mll.enabled={mll}", f"--model.mrl.enabled={mrl}",
             "--data.stage1.steps=1", "--data.stage2.steps=1", "--trainer.limit_val_batches=1"]
    assert main(fit_args(tiny_shards, tmp_path, *flags)) == 0
    metrics = next(tmp_path.glob("**/metrics.csv"), None)
    assert metrics is not None, "the run logged nothing"
    saved = yaml.safe_load((metrics.parent / "config.yaml").read_text())  # the resolved config, next to the logs
    assert saved["model"]["mel"]["enabled"] is mel and saved["data"]["init_args"]["stage1"]["steps"] == 1
    rows = list(csv.DictReader(metrics.open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    logged = set(rows[0])
    # An axis switched off leaves one term: the full size (MRL) or the last layer (MLL) only.
    assert sorted(k for k in logged if k.startswith("train/loss/mrl@")) == (
        ["train/loss/mrl@16", "train/loss/mrl@32", "train/loss/mrl@8"] if mrl else ["train/loss/mrl@32"])
    assert sorted(k for k in logged if k.startswith("train/loss/mll@")) == (
        ["train/loss/mll@1", "train/loss/mll@2"] if mll else ["train/loss/mll@2"])
    ranks = {float(r["train/mel_rank"]) for r in rows if r.get("train/mel_rank")}
    assert (ranks != {0.0}) == mel  # 0 stands for "MEL off"


@pytest.mark.parametrize("subcommand, logged", [("validate", "val/loss"), ("test", "test/loss"), ("predict", None)])
def test_validate_test_and_predict_run_on_a_trained_checkpoint(tiny_shards, tmp_path, subcommand, logged, capsys):
    assert main(fit_args(tiny_shards, tmp_path / "fit", checkpoint_every_step(tmp_path / "ckpt"))) == 0
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    saved = tmp_path / "predictions.pt"
    extra = [callback("tests.robustness.callbacks.SavePredictions", path=str(saved))] if not logged else []
    args = fit_args(tiny_shards, tmp_path / subcommand, f"--ckpt_path={ckpt}", *extra)
    args[0] = subcommand
    capsys.readouterr()
    assert main(args) == 0
    if logged:
        assert logged in capsys.readouterr().out  # Lightning's results table
        return
    assert not list((tmp_path / subcommand).glob("**/*.ckpt"))  # predicting writes no checkpoint
    # The predictions are the checkpoint's own embeddings of the held-out queries (stage 2: with instructions),
    # one per held-out sample.
    predicted = torch.load(saved, weights_only=False)
    rows = {row["id"]: row for row in map(json.loads, (FIXTURES / "stage2.jsonl").read_text().splitlines())}
    assert sorted(predicted["ids"]) == sorted(rows)
    encoder = load_checkpoint(ckpt)
    queries = [rows[i]["query"] for i in predicted["ids"]]
    instructions = {rows[i]["instruction"] for i in predicted["ids"]}
    assert len(instructions) == 1  # the fixture gives every row the same instruction
    expected = encoder.embed(queries, instruction=instructions.pop())
    assert predicted["vectors"].shape == expected.shape == (len(rows), encoder.backbone.hidden_size)
    torch.testing.assert_close(predicted["vectors"], expected, atol=1e-5, rtol=1e-5)
    encoded = encoder.encode(queries, instruction=rows[predicted["ids"][0]]["instruction"])
    torch.testing.assert_close(torch.nn.functional.normalize(predicted["vectors"], dim=-1), encoded, atol=1e-5,
                               rtol=1e-5)




def test_demo_config_builds_its_data_and_runs_with_fast_dev_run(tmp_path):
    # The shipped config unchanged: under fast_dev_run the grids score a few texts per task (EvalCaps.smoke) and
    # the control arm trains the same single step, as Lightning's loops run one batch.
    # batches of 4 instead of 32: the 3D-ML and control steps cost a fraction and still run every part of them
    done = run_cli(tmp_path, "fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.fast_dev_run=2",
                   "--data.stage1.batch_size=4", "--data.stage2.batch_size=4")
    assert (tmp_path / "data" / "demo" / "demo.json").is_file()  # built on first use, from installed packages
    grid = next((tmp_path / "runs" / "demo").glob("**/grid"))
    assert (grid / "grid.csv").is_file() and (grid / "baseline" / "grid.csv").is_file()
    assert (grid / "control" / "grid.csv").is_file()  # the control arm trained and was scored
    assert "the control arm trained 2 optimizer steps (3D-ML: 2)" in done.stderr
    comparison = (grid / "comparison.csv").read_text()
    assert "rank" in comparison and len(comparison.splitlines()) > 1 and "delta_control" in comparison
    assert "| point | starting model | plain fine-tune | 3D-ML |" in (grid / "comparison.md").read_text()
    rows = list(csv.DictReader((grid / "grid.csv").open()))
    assert {r["rank"] for r in rows} == {"32", "64", "128", "384"} and {r["depth"] for r in rows} == {"2", "4", "6"}
    assert {r["task"] for r in rows} == {"lee", "wiki", "sphinx", "bitext", "dialogue"}
    assert_quiet(done.stderr)


def test_tiny_qwen3_config_runs_the_decoder_path_through_both_stages(workdir, tiny_qwen3_run):
    done = tiny_qwen3_run
    metrics = next((workdir / "runs" / "tiny_qwen3").glob("**/metrics.csv"))
    rows = list(csv.DictReader(metrics.open()))
    steps = [r for r in rows if r.get("train/loss")]
    assert [float(r["train/stage"]) for r in steps] == [1.0, 1.0, 2.0, 2.0]
    assert all(0 < float(r["train/loss"]) < 1e3 for r in steps)
    assert {float(r["train/mel_rank"]) for r in steps} <= {16.0, 32.0, 64.0}
    assert any(r.get("val/loss") for r in rows)
    # Written to a pipe, the progress is a line per step (log_every_n_steps=1) naming the stage, then validation.
    progress = [line for line in done.stdout.splitlines() if line.startswith("mlembed: step ")]
    assert [line.split(" · ")[:2] for line in progress] == [
        ["mlembed: step 1/4", "stage 1"], ["mlembed: step 2/4", "stage 1"], ["mlembed: step 3/4", "stage 2"],
        ["mlembed: step 4/4", "stage 2"]]
    assert all(" · loss " in line and " steps/s" in line for line in progress)
    assert "Epoch" not in done.stdout and "FLOPs" not in done.stdout
    assert re.search(r"^mlembed: validation at step 4: val/loss \d", done.stdout, re.M)
    assert_quiet(done.stderr)


SHOWN = (
    r"Seed set to \d+",
    r"GPU available: \w+, used: \w+",
    r"TPU available: \w+, using: \d+ TPU cores",
    r"Running in `fast_dev_run` mode: .*",
    r"`Trainer\(\w+=1(\.0)?\)` was configured so .*",  # Lightning reading back a flag the user set to 1
    r"Loading `train_dataloader` to estimate number of stepping batches\.",
    r"`Trainer\.fit` stopped: `max_steps=\d+` reached\.",
    r"SVDInit: factorised the .*",
    r"GridEvaluation.*",
)
"""What a fit may print on stderr: Lightning's run facts and mlembed's own lines (progress goes to stdout)."""


def assert_quiet(stderr: str) -> None:
    """Every stderr line is one the project chose to show: no warning, no advert, no stray bar."""
    unchosen = [line for line in stderr.splitlines() if line.strip()
                and not any(re.fullmatch(pattern, line) for pattern in SHOWN)]
    assert not unchosen, "a fit printed lines no one chose:\n" + "\n".join(unchosen)


def test_gradient_caching_runs_from_the_cli_on_a_config_that_clips(tiny_shards, tmp_path):
    flags = ["--model.grad_cache.chunk_size=2", "--trainer.gradient_clip_val=1.0", "--data.stage1.steps=1",
             "--data.stage2.steps=1", "--trainer.limit_val_batches=1"]
    assert main(fit_args(tiny_shards, tmp_path, *flags)) == 0
    metrics = next(tmp_path.glob("**/metrics.csv"))
    saved = yaml.safe_load((metrics.parent / "config.yaml").read_text())
    assert saved["model"]["grad_cache"] == {"chunk_size": 2, "gradient_clip_val": 1.0}
    assert saved["trainer"]["gradient_clip_val"] is None
    losses = [float(r["train/loss"]) for r in csv.DictReader(metrics.open()) if r.get("train/loss")]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
