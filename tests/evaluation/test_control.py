"""The control arm: the same training with the axes off, truncated as the starting model is, reported beside it."""

from __future__ import annotations

import csv
import json

import torch
from lightning.pytorch import Trainer

from mlembed.cli import main
from mlembed.control import plain_copy, train_control, truncatable
from mlembed.data.datamodule import LoaderSettings, ShardDataModule, StageSettings
from mlembed.losses import ContrastiveLoss
from mlembed.optim import OptimizerConfig
from tests.helpers import tiny_module
from tests.robustness.tiny_run import callback, fit_args


def test_plain_copy_switches_every_axis_and_the_teacher_off():
    module = tiny_module("bert", rank=64, layers=3,
                         loss=ContrastiveLoss(kd_teacher="model", kd_similarity_weight=5.0, temperature=0.07))
    plain = plain_copy(module)
    assert not (plain.mel.enabled or plain.mll.enabled or plain.mrl.enabled)
    assert not plain.loss_fn.distills and plain.loss_fn.temperature == 0.07
    assert plain.optimizer_config == module.optimizer_config and plain.encoder.backbone_config == module.encoder.backbone_config
    plain.configure_model()
    assert plain.layers == (3,) and plain.dims == (64,) and plain.encoder.factorized_embedding is None
    assert not hasattr(plain, "frozen_teacher")


def test_truncatable_ranks_are_the_direct_svd_truncation_of_the_fine_tuned_matrix():
    like = tiny_module("bert", rank=64, layers=3)
    plain = plain_copy(like)
    plain.configure_model()
    with torch.no_grad():  # stands for fine-tuning: every weight moves
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = truncatable(plain, like)
    texts = ["the cat sat on the mat", "Où est la gare ?", "hello world"]
    for depth in (1, 3):
        torch.testing.assert_close(out.encoder.embed(texts, depth=depth), plain.encoder.embed(texts, depth=depth), atol=1e-4, rtol=0)
    matrix = plain.encoder.backbone.model.get_input_embeddings().weight.detach().double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    for k in (8, 32):
        best = (u[:, :k] * s[:k]) @ vh[:k]  # the best rank-k approximation (Eckart-Young)
        torch.testing.assert_close(out.encoder.factorized_embedding.materialize(k).double(), best, atol=1e-4, rtol=0)


def test_train_control_runs_the_same_steps_on_the_same_data(tiny_shards, tmp_path):
    data = ShardDataModule(StageSettings([str(tiny_shards["stage1"])], steps=3, batch_size=4),
                           loader=LoaderSettings(bucket_batches=1))
    module = tiny_module("bert", rank=64, layers=2, max_seq_length=16)
    module.optimizer_config = OptimizerConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0)  # moves in 3 steps
    data.tokenizer = module.encoder.text_tokenizer
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    control, steps = train_control(trainer, module)
    assert steps == trainer.global_step == 3 and data.trainer is trainer
    assert control.encoder.points() == module.encoder.points()  # scored at the same (rank, depth, dim) points
    start = tiny_module("bert", rank=64, layers=2, max_seq_length=16)
    texts = ["the cat sat on the mat", "hello world"]
    assert not torch.allclose(control.encoder.embed(texts), start.encoder.embed(texts), atol=1e-3)  # it trained
    assert not torch.allclose(control.encoder.embed(texts), module.encoder.embed(texts), atol=1e-3)  # but not as 3D-ML did


def test_demo_style_run_reports_three_arms(tiny_shards, tmp_path):
    grid = callback("mlembed.callbacks.grid.GridEvaluation", tasks=["lee", "wiki"], baseline=True,
                    control=True, out_dir=str(tmp_path / "grid"), ranks=[8, 32], depths=[1, 2], dims=[8, 32],
                    caps={"max_sts_pairs": 40, "max_passages": 10})
    assert main(fit_args(tiny_shards, tmp_path, "--data.stage1.steps=2", "--data.stage2.steps=1", grid)) == 0
    out = tmp_path / "grid"
    markdown = (out / "comparison.md").read_text()
    assert "| point | starting model | plain fine-tune | 3D-ML | 3D-ML - start | 3D-ML - plain |" in markdown
    assert "| rank 32, depth 2, dim 32" not in markdown  # the full point is named "full"
    assert "\n| full | " in markdown and "\n| depth 1 |" not in markdown  # key points only: none at depth 1
    assert "control | control retention |" in markdown and "| delta | control | delta control |" in markdown
    assert "## in-domain score" not in markdown  # lee and wiki are both out of domain
    assert (out / "arms_score.png").stat().st_size > 1000
    grids = {name: _scores(out / sub / "grid.csv") for name, sub in
             (("baseline", "baseline"), ("control", "control"), ("final", "."))}
    assert grids["control"] != grids["baseline"] and grids["control"] != grids["final"]
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert len(rows) == 8 and all(row["control"] for row in rows)
    assert json.dumps(markdown.count("## ")) and markdown.count("## lee: spearman") == 1


def _scores(path) -> list[float]:
    return [float(row["value"]) for row in csv.DictReader(path.open())]
