"""Stages counted in epochs: the steps follow from the manifests and the global batch; each epoch draws every
source's batches exactly once, in a seeded order shared by all ranks (the authors' epoch)."""

from __future__ import annotations

from collections import Counter

import pytest

from mlembed.data.datamodule import LoaderSettings, ShardDataModule, StageSettings
from mlembed.data.stream import TrainStream

from .conftest import SOURCES


def module(shard_dir, tokenizer, **stage) -> ShardDataModule:
    return ShardDataModule(StageSettings([str(shard_dir)], **stage), loader=LoaderSettings(bucket_batches=1),
                           tokenizer=tokenizer)


@pytest.mark.parametrize("world", [1, 2])
def test_steps_follow_from_the_manifest_and_the_global_batch(shard_dir, tokenizer, world):
    dm = module(shard_dir, tokenizer, epochs=2, batch_size=4)
    per_source = {name: count // (4 * world) for name, (_, count) in SOURCES.items()}  # 60, 40, 20 samples
    assert dm.epoch_batches(1, dm.stage1, world) == per_source
    assert dm.steps_for(world) == 2 * sum(per_source.values())
    assert f"stage 1: 2 epochs x {sum(per_source.values())} batches (3 sources, global batch 4 x {world} processes)" \
        in dm.describe(world)
    assert module(shard_dir, tokenizer, epochs=0.5, batch_size=4).steps_for(world) == \
        round(0.5 * sum(per_source.values()))


def test_each_epoch_draws_every_sources_batches_once_in_the_same_order_on_every_rank(shard_dir, tokenizer):
    dm = module(shard_dir, tokenizer, epochs=3, batch_size=4)
    plan = dm.plans()[0]
    per_epoch = sum(plan.epoch.values())
    orders = [[plan.source_of(e * per_epoch + i, seed=0).name for i in range(per_epoch)] for e in range(3)]
    for order in orders:
        assert Counter(order) == Counter(plan.epoch)  # without replacement: exactly its batches, every epoch
    assert orders[0] != orders[1]  # a new order each epoch
    assert orders[0] == [dm.plans()[0].source_of(i, seed=0).name for i in range(per_epoch)]  # any process agrees
    batches = list(TrainStream(dm.plans(), seed=0))  # the stream yields exactly those batches, homogeneous
    assert len(batches) == dm.steps_for(1) == 3 * per_epoch
    assert [b["source"] for b in batches] == [name for order in orders for name in order]


@pytest.mark.parametrize("stage, expected", [
    ({"epochs": -1}, r"--data\.stage1\.epochs \(-1\) must not be negative"),
    ({"epochs": 1, "steps": 5}, r"--data\.stage1\.epochs \(1\) and --data\.stage1\.steps \(5\) are both set"),
    ({"epochs": 1, "weights": {"alpha": 1}}, r"--data\.stage1\.weights set with --data\.stage1\.epochs"),
])
def test_bad_epoch_settings_name_the_flag(shard_dir, tokenizer, stage, expected):
    with pytest.raises(ValueError, match=expected):
        module(shard_dir, tokenizer, **stage)


def test_epochs_without_shards_or_manifest_name_the_flag(shard_dir, tokenizer):
    with pytest.raises(ValueError, match=r"--data\.stage1\.shards is empty but --data\.stage1\.epochs is 1"):
        ShardDataModule(StageSettings([], epochs=1), tokenizer=tokenizer)
    pattern = ShardDataModule(StageSettings([f"{shard_dir}/alpha-{{000000..000000}}.tar"], epochs=1),
                              tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"--data\.stage1\.epochs needs each source's sample count from a shard "
                                         r"manifest, but alpha has none"):
        pattern.steps_for(1)
    with pytest.raises(ValueError, match=r"no source of --data\.stage1\.shards holds a whole global batch of 200"):
        module(shard_dir, tokenizer, epochs=1, batch_size=100).steps_for(2)
