"""``python -m mlembed evaluate`` (run.main): one point or the grid, the budget pick, real checkpoints."""

from __future__ import annotations

import csv
import re

import pytest

import mlembed
from mlembed.cli.evaluate import main
from tests.evaluation.conftest import TinyEncoder, write_jsonl


@pytest.fixture
def sts_file(tmp_path):
    rows = [{"text1": a, "text2": b, "score": s} for a, b, s in [
        ("the cat sleeps", "a cat is sleeping", 4.8), ("the cat sleeps", "stock prices fell", 0.2),
        ("I drink tea", "she drinks green tea", 3.9), ("good morning", "the station is closed", 0.5)]]
    return write_jsonl(tmp_path / "toy.jsonl", rows)


@pytest.fixture
def fake_load(monkeypatch, tmp_path):
    encoder = TinyEncoder()
    seen = {}
    monkeypatch.chdir(tmp_path)  # the model files "m" and "m.ckpt" exist (evaluate checks --model first)
    for name in ("m", "m.ckpt"):
        (tmp_path / name).touch()

    def load(path, device="cpu", svd_ranks=None):
        seen.update(path=path, device=device, svd_ranks=svd_ranks)
        return encoder

    monkeypatch.setattr(mlembed, "load", load)
    return seen


def grid_points(out) -> set:
    with (out / "grid.csv").open() as handle:
        return {(r["rank"], r["depth"], r["dim"]) for r in csv.DictReader(handle)}


def test_without_grid_scores_only_the_full_point(fake_load, sts_file, tmp_path, capsys):
    code = main(["--model", "m.ckpt", "--tasks", f"sts:{sts_file}", "--out", str(tmp_path / "out"), "--no-plots"])
    assert code == 0 and fake_load == {"path": "m.ckpt", "device": "cpu", "svd_ranks": None}
    assert grid_points(tmp_path / "out") == {("32", "3", "32")}
    assert "## toy: spearman" in capsys.readouterr().out


def test_grid_with_budget_prints_the_pick(fake_load, sts_file, tmp_path, capsys):
    args = ["--model", "m", "--tasks", f"sts:{sts_file}", "--out", str(tmp_path / "out"), "--grid",
            "--budget-bytes", "32", "--bytes-per-float", "2", "--depths", "1", "3"]
    assert main(args) == 0
    assert len(grid_points(tmp_path / "out")) == 3 * 2 * 3
    pick = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("best within budget"))
    assert "(bytes/vector <= 32)" in pick and re.search(r" dim=(\d+) ", pick)[1] in ("8", "16")
    assert (tmp_path / "out" / "pareto_bytes.png").stat().st_size > 1000


def test_budget_nobody_fits_exits_one(fake_load, sts_file, tmp_path, capsys):
    args = ["--model", "m", "--tasks", f"sts:{sts_file}", "--out", str(tmp_path / "out"), "--budget-params", "5",
            "--ranks", "8", "--depths", "1", "--no-plots"]
    assert main(args) == 1
    assert "no grid point fits the budget (params <= 5)" in capsys.readouterr().out


def test_bad_task_names_the_flag(fake_load, capsys):
    assert main(["--model", "m", "--tasks", "nope"]) == 2  # one line, no traceback: the error contract
    assert "mlembed evaluate: error: --tasks 'nope'" in capsys.readouterr().err


def test_real_checkpoint_through_mlembed_load(sts_file, tmp_path):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from mlembed.callbacks import SVDInit
    from tests.helpers import make_batch, tiny_module

    module = tiny_module("bert", rank=32, layers=2, init=False)
    trainer = Trainer(max_steps=1, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      callbacks=[SVDInit()])
    trainer.fit(module, train_dataloaders=DataLoader([make_batch(module)], batch_size=None))
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    code = main(["--model", str(tmp_path / "tiny.ckpt"), "--tasks", f"sts:{sts_file}", "--grid", "--no-plots",
                 "--out", str(tmp_path / "out")])
    points = module.encoder.points()
    assert code == 0
    assert len(grid_points(tmp_path / "out")) == len(points.ranks) * len(points.depths) * len(points.dims)


def test_svd_ranks_score_a_model_trained_without_mel(sts_file, tmp_path, capsys):
    from tests.test_export import fit_checkpoint

    module, ckpt = fit_checkpoint("bert", tmp_path, mel=False)
    hidden = module.encoder.backbone.hidden_size
    common = ["--model", str(ckpt), "--tasks", f"sts:{sts_file}", "--grid", "--no-plots", "--dims", str(hidden)]
    assert main([*common, "--ranks", "8", "--out", str(tmp_path / "refused")]) == 2
    assert "--svd-ranks 8 scores the direct SVD truncation" in capsys.readouterr().err
    assert main([*common, "--ranks", "8", "--svd-ranks", "8", "--out", str(tmp_path / "refused")]) == 2
    without_grid = [c for c in common if c != "--grid"]
    assert main([*without_grid, "--svd-ranks", "8", "--out", str(tmp_path / "refused")]) == 2
    assert "--svd-ranks scores several ranks: add --grid" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

    assert main([*common, "--svd-ranks", "8", "16", "--out", str(tmp_path / "svd")]) == 0
    assert main([*common, "--out", str(tmp_path / "dense")]) == 0
    svd, dense = rows(tmp_path / "svd"), rows(tmp_path / "dense")
    depths = module.encoder.points().depths
    assert set(svd) == {(str(r), str(d)) for r in (8, 16, hidden) for d in depths}
    assert set(dense) == {("", str(d)) for d in depths}  # a dense model has no rank axis
    for d in depths:  # the full rank is the trained model itself
        assert svd[(str(hidden), str(d))] == pytest.approx(dense[("", str(d))], abs=1e-4)


def rows(out) -> dict:
    """``{(rank, depth): spearman}`` of a grid.csv."""
    with (out / "grid.csv").open() as handle:
        return {(r["rank"], r["depth"]): float(r["value"]) for r in csv.DictReader(handle) if r["metric"] == "spearman"}
