"""The callbacks that drive the axes, inside a real Lightning fit."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch import Callback

from mlembed.callbacks import LayerSchedule, RankSampler, SVDInit
from tests.helpers import make_batch, tiny_module


class _Record(Callback):
    """Remembers the rank and layers each training step ran with."""

    def __init__(self):
        self.ranks, self.layers = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ranks.append(pl_module.encoder.mel_rank)
        self.layers.append(pl_module.active_layers)


def _fit(module, callbacks, tmp_path, steps=6):
    batch = make_batch(module)
    loader = torch.utils.data.DataLoader([batch] * steps, batch_size=None)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         default_root_dir=tmp_path)
    trainer.fit(module, loader)
    return trainer


def test_svd_init_factorises_before_training_and_rank_sampler_varies_the_rank(tmp_path):
    module = tiny_module("bert", init=False)
    original = module.encoder.factorized_embedding.source_weight.clone()
    record = _Record()
    _fit(module, [SVDInit(), RankSampler(seed=1), record], tmp_path, steps=8)
    factors = module.encoder.factorized_embedding
    assert bool(factors.initialized)
    assert factors.source_weight is None
    assert record.ranks == [RankSampler(seed=1).rank_at(module.ranks, s) for s in range(8)]
    assert len(set(record.ranks)) > 1
    assert module.encoder.mel_rank == factors.max_rank  # full rank again after fit
    # the factors started from the best rank-32 fit of the original matrix, and training moved them a little
    u, s, vh = torch.linalg.svd(original.double(), full_matrices=False)
    best = ((u[:, :32] * s[:32]) @ vh[:32]).float()
    drift = (factors.materialize() - best).norm() / best.norm()
    assert 0 < drift < 0.05


def test_svd_init_happens_before_the_optimizer_sees_the_parameters(tmp_path):
    module = tiny_module("bert", init=False)
    trainer = _fit(module, [SVDInit()], tmp_path, steps=1)
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert id(module.encoder.factorized_embedding.A) in optimised and id(module.encoder.factorized_embedding.B) in optimised


def test_layer_schedule_deepest_first_ramps_up_and_fit_ends_with_all_layers(tmp_path):
    module = tiny_module("bert", mel=False)
    record = _Record()
    _fit(module, [LayerSchedule(mode="deepest_first", ramp_steps=4), record], tmp_path, steps=6)
    assert record.layers == [(4,), (4,), (2, 4), (2, 4), (1, 2, 4), (1, 2, 4)]  # all layers at step 4
    assert module.active_layers == (1, 2, 4)


def test_layer_schedule_sample_always_keeps_the_last_layer():
    schedule = LayerSchedule(mode="sample", num_sampled=2, seed=0)
    layers = (1, 2, 4, 8, 16)
    draws = [schedule.layers_at(layers, s) for s in range(40)]
    assert all(d[-1] == 16 and len(d) == 3 and list(d) == sorted(d) for d in draws)
    assert len(set(draws)) > 3
    assert draws == [LayerSchedule(mode="sample", num_sampled=2, seed=0).layers_at(layers, s) for s in range(40)]


def test_layer_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        LayerSchedule(mode="random")
    with pytest.raises(ValueError, match="ramp_steps"):
        LayerSchedule(ramp_steps=0)


def test_mel_switched_on_alone_brings_the_callbacks_it_needs(tmp_path):
    """No SVDInit or RankSampler in the trainer: the module adds both (seed 0), so the run is a complete MEL run."""
    module = tiny_module("bert", init=False)  # factors unset: only SVDInit sets them
    record = _Record()
    trainer = _fit(module, [record], tmp_path, steps=8)
    assert bool(module.encoder.factorized_embedding.initialized)
    assert record.ranks == [RankSampler(seed=0).rank_at(module.ranks, s) for s in range(8)]
    assert [type(c) for c in trainer.callbacks].count(RankSampler) == 1


def test_a_rank_sampler_the_user_lists_is_kept_and_mel_off_adds_nothing(tmp_path):
    module = tiny_module("bert")
    record = _Record()
    trainer = _fit(module, [RankSampler(seed=3), record], tmp_path, steps=6)
    assert record.ranks == [RankSampler(seed=3).rank_at(module.ranks, s) for s in range(6)]
    assert [type(c) for c in trainer.callbacks].count(RankSampler) == 1
    plain = tiny_module("bert", mel=False)
    trainer = _fit(plain, [], tmp_path, steps=1)
    assert not any(isinstance(c, (SVDInit, RankSampler)) for c in trainer.callbacks)


def test_a_subclass_of_a_needed_callback_stands_in_for_it(tmp_path):
    class EveryStepAtEight(RankSampler):
        def rank_at(self, ranks, step):
            return 8

    module = tiny_module("bert")
    record = _Record()
    trainer = _fit(module, [EveryStepAtEight(), record], tmp_path, steps=4)
    assert record.ranks == [8, 8, 8, 8]
    assert not any(type(c) is RankSampler for c in trainer.callbacks)
