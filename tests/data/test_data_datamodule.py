"""DataModule settings, shard locations (directories, brace patterns, named patterns, pipe: URLs), validation."""

from __future__ import annotations

import re

import pytest

from mlembed.data.datamodule import LoaderSettings, ShardDataModule, StageSettings
from mlembed.data.sources import resolve_sources


@pytest.mark.parametrize("stage1,stage2,loader,flag,reason", [
    (StageSettings(["x"], steps=-1), None, None, "--data.stage1.steps", r" \(-1\) must not be negative"),
    (StageSettings(["x"], steps=1, batch_size=0), None, None, "--data.stage1.batch_size", r" \(0\) must be at least 1"),
    (StageSettings([], steps=3), None, None, "--data.stage1.shards", r" is empty but --data\.stage1\.steps is 3"),
    (StageSettings(["x"], steps=1), StageSettings(["x"], steps=1, num_negatives={"ranking": 2}), None,
     "--data.stage2.num_negatives", r" names unknown task 'ranking' \(tasks: retrieval, "),
    (StageSettings(["x"], steps=1), StageSettings(["x"], steps=1, templates={"retrieval": "{instruction}"}), None,
     "--data.stage2.templates", r"\[retrieval\] must contain \{query\}: '\{instruction\}'"),
    (StageSettings(["x"], steps=1), None, LoaderSettings(bucket_batches=0), "--data.loader.bucket_batches",
     r" \(0\) must be at least 1"),
    (StageSettings(["x"], steps=0), StageSettings(["x"], steps=0), None, "--data.stage1.steps + --data.stage2.steps",
     " must be at least 1"),
])
def test_settings_errors_name_the_flag(stage1, stage2, loader, flag, reason):
    with pytest.raises(ValueError, match=flag.replace("+", r"\+")):
        ShardDataModule(stage1, stage2, loader)
    with pytest.raises(ValueError, match=re.escape(flag) + reason):  # the flag, then why
        ShardDataModule(stage1, stage2, loader)


def test_total_steps_and_missing_tokenizer(shard_dir):
    dm = ShardDataModule(StageSettings([str(shard_dir)], steps=4), StageSettings([str(shard_dir)], steps=6))
    assert dm.total_steps == 10
    with pytest.raises(ValueError, match="no tokenizer"):
        dm.train_dataloader()


def test_patterns_named_patterns_and_pipe_urls_resolve_to_sources(shard_dir):
    brace = f"{shard_dir}/alpha-{{000000..000005}}.tar"
    sources = resolve_sources([brace, f"pipe:cat {shard_dir}/beta-000000.tar"], {"alpha": 2, "beta": 1}, "--data.stage1")
    assert [(s.name, len(s.urls), s.weight) for s in sources] == [("alpha", 6, 2.0), ("beta", 1, 1.0)]
    named = resolve_sources([f"mine={shard_dir}/gamma-{{000000..000001}}.tar"], {"mine": 1}, "--data.stage1")
    assert named[0].name == "mine" and len(named[0].urls) == 2


def test_weights_are_required_without_manifest_and_must_name_known_sources(shard_dir, tmp_path):
    with pytest.raises(ValueError, match="--data.stage2.weights is needed"):
        resolve_sources([f"{shard_dir}/alpha-000000.tar"], None, "--data.stage2")
    with pytest.raises(ValueError, match=r"--data.stage1.weights names unknown sources \['delta'\]"):
        resolve_sources([str(shard_dir)], {"delta": 1}, "--data.stage1")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        resolve_sources([str(tmp_path)], None, "--data.stage1")
    with pytest.raises(FileNotFoundError, match=rf"--data\.stage1\.shards: {re.escape(str(tmp_path))} has no manifest\.json \(unfinished"):
        resolve_sources([str(tmp_path)], None, "--data.stage1")
    # A path that does not exist is named as such (not as a file name it cannot read a source from).
    with pytest.raises(FileNotFoundError, match=rf"--data\.stage1\.shards: {re.escape(str(tmp_path))}/gone does not exist"):
        resolve_sources([str(tmp_path / "gone")], None, "--data.stage1")
    with pytest.raises(FileNotFoundError, match=r"--data\.stage1\.shards: \S*/alpha-000006\.tar does not exist"):
        resolve_sources([f"{shard_dir}/alpha-{{000000..000099}}.tar"], {"alpha": 1}, "--data.stage1")


def test_pipe_url_streams_through_the_datamodule(shard_dir, tokenizer):
    pattern = f"pipe:cat {shard_dir}/gamma-{{000000..000001}}.tar"
    dm = ShardDataModule(StageSettings([pattern], steps=3, batch_size=4, weights={"gamma": 1}), tokenizer=tokenizer)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and {b["source"] for b in batches} == {"gamma"}


def test_validation_batches_carry_source_and_stage(shard_dir, tokenizer):
    dm = ShardDataModule(
        StageSettings([str(shard_dir)], steps=1, val_shards=[str(shard_dir)], val_batch_size=16),
        StageSettings([str(shard_dir)], steps=1, val_shards=[f"{shard_dir}/gamma-{{000000..000001}}.tar"]),
        tokenizer=tokenizer,
    )
    batches = list(dm.val_dataloader())
    per = {(b["stage"], b["source"]): 0 for b in batches}
    for b in batches:
        per[b["stage"], b["source"]] += len(b["ids"])
    assert per == {(1, "alpha"): 60, (1, "beta"): 40, (1, "gamma"): 20, (2, "gamma"): 20}
    no_val = ShardDataModule(StageSettings([str(shard_dir)], steps=1), tokenizer=tokenizer)
    assert no_val.val_dataloader() == []
