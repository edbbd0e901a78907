"""Gradient caching gives the uncached step's loss and gradients, with MEL + MLL + MRL on, and trains in a fit."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from mlembed.callbacks import RankSampler, SVDInit
from mlembed.gradcache import CachedStep, GradCache, chunk_rows
from mlembed.module import _stack_inputs
from mlembed.optim import OptimizerConfig
from tests.helpers import make_batch, tiny_module

CHUNK = 4  # smaller than the 6 queries and the 12 documents, and not a divisor of 6: a short last chunk


def _grads(module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict, want: dict, tol: float = 1e-5) -> None:
    """Equal to ``tol`` of each tensor's largest entry, or 1e-6 for gradients that are 0 in exact arithmetic
    (attention key biases): chunking reorders float sums, about 1e-7 relative noise."""
    assert got.keys() == want.keys()
    for name in want:
        atol = tol * float(want[name].abs().max()) + 1e-6
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=0, msg=name)


def _cached(module, batch, chunk: int = CHUNK) -> tuple[torch.Tensor, dict]:
    module.zero_grad()
    step = module.cached_step(batch, module.layers, chunk)
    loss, _ = step.loss()
    step.backward(lambda surrogate: surrogate.backward())
    return loss, _grads(module)


@pytest.mark.parametrize("kind", ["bert", "qwen3"])
def test_cached_step_equals_the_uncached_step_with_all_three_axes(kind):
    module = tiny_module(kind, rank=32, layers=3)  # MLL layers {1, 2, 3}, MRL dims 8..64, MEL ranks 8..32
    module.encoder.mel_rank = 16  # the step's sampled rank: both passes must embed with it
    batch = make_batch(module)
    assert len(module.layers) == 3 and len(module.dims) > 3
    loss, _ = module.model_step(batch, module.layers)
    module.zero_grad()
    loss.backward()
    want = _grads(module)
    got_loss, got = _cached(module, batch)
    torch.testing.assert_close(got_loss, loss.detach(), atol=1e-6, rtol=1e-5)
    _assert_same_grads(got, want)
    assert want["encoder.backbone.model.embeddings.word_embeddings.A" if kind == "bert" else
                "encoder.backbone.model.embed_tokens.A"][
        :, 16:].abs().max() == 0  # ranks above the active one got no gradient in either pass


def test_cached_step_replays_dropout_exactly():
    """With dropout on, pass 3 must draw pass 1's masks: compare with chunked forwards that keep their graph."""
    module = tiny_module("bert", rank=32, layers=2)
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.3
    module.train()
    batch = make_batch(module)
    sides = (batch["query"], _stack_inputs(batch["positive"], batch.get("negatives")))

    def with_graph(seed: int) -> dict:
        torch.manual_seed(seed)
        module.zero_grad()
        embedded = []
        for inputs in sides:
            rows = inputs["input_ids"].shape[0]
            parts = [module.encoder(chunk_rows(inputs, s, min(s + CHUNK, rows)), module.layers)
                     for s in range(0, rows, CHUNK)]
            embedded.append({layer: torch.cat([p[layer] for p in parts]) for layer in module.layers})
        module.loss_on_embeddings(batch, *embedded, module.layers)[0].backward()
        return _grads(module)

    want = with_graph(seed=1)
    torch.manual_seed(1)
    _, got = _cached(module, batch)
    _assert_same_grads(got, want)
    other = with_graph(seed=2)
    assert any(not torch.allclose(other[n], want[n], atol=1e-4) for n in want)  # dropout does change gradients


def test_chunk_rows_trims_columns_that_are_padding_in_every_row():
    inputs = {"input_ids": torch.arange(12).reshape(3, 4),
              "attention_mask": torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]])}
    piece = chunk_rows(inputs, 0, 2)
    assert piece["input_ids"].tolist() == [[1, 2], [5, 6]]
    assert piece["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert chunk_rows(inputs, 2, 3)["input_ids"].shape == (1, 4)


def test_backward_before_loss_and_bad_settings_fail_clearly():
    step = CachedStep(embed=lambda x: {}, inputs=(), objective=lambda: None, chunk_size=2)
    with pytest.raises(RuntimeError, match="loss"):
        step.backward(lambda s: None)
    with pytest.raises(ValueError, match="--model.grad_cache.chunk_size"):
        GradCache(chunk_size=0)


class _Losses(Callback):
    def __init__(self):
        self.losses, self.lrs, self.lrs_used = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs_used.append(trainer.optimizers[0].param_groups[0]["lr"])  # the lr this step's update uses

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _scheduled_lr(step: int, config: OptimizerConfig, total_steps: int) -> float:
    """The lr after ``step`` scheduler steps: linear warmup from 0, then cosine from lr down to min_lr."""
    if step < config.warmup_steps:
        return config.lr * step / config.warmup_steps
    progress = (step - config.warmup_steps) / (total_steps - config.warmup_steps)
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def test_fit_with_grad_cache_steps_the_optimizer_and_the_schedule(tmp_path):
    module = tiny_module("bert", rank=32, layers=2, init=False)
    module.grad_cache = GradCache(chunk_size=2, gradient_clip_val=1.0)
    module.automatic_optimization = False
    # Two warmup steps, then the cosine down to the floor at the last of 4 steps: every branch of the schedule.
    module.optimizer_config = config = OptimizerConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    record = _Losses()
    batch = make_batch(module)
    steps = 4
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[SVDInit(), RankSampler(), record])
    trainer.fit(module, DataLoader([batch] * steps, batch_size=None))
    assert trainer.global_step == steps
    assert all(torch.isfinite(torch.tensor(record.losses)))
    assert record.lrs[0] != record.lrs[-1]  # the warmup schedule advanced each step
    # Each step used, then advanced to, the schedule's value: one scheduler step per optimizer step.
    assert record.lrs_used == pytest.approx([_scheduled_lr(k, config, steps) for k in range(steps)], rel=1e-9)
    assert record.lrs == pytest.approx([_scheduled_lr(k + 1, config, steps) for k in range(steps)], rel=1e-9)
    assert record.lrs == pytest.approx([5e-4, 1e-3, 5.5e-4, 1e-4], rel=1e-9)  # the same, written out
    # ... and one AdamW step per batch.
    state = trainer.optimizers[0].state
    assert state and {float(s["step"]) for s in state.values()} == {float(steps)}
    changed = [n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any(n.endswith(".A") for n in changed) and any("encoder.layer" in n for n in changed)


def test_module_with_grad_cache_uses_manual_optimization():
    from mlembed.module import EmbeddingModule
    from tests.helpers import tiny_backbone

    module = EmbeddingModule(tiny_backbone("bert"), grad_cache=GradCache(chunk_size=8))
    assert module.automatic_optimization is False and module.grad_cache.chunk_size == 8
    assert EmbeddingModule(tiny_backbone("bert")).automatic_optimization is True
