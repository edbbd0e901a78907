"""The demo builder: shards for both stages from Django and chatterbot text, a clean held-out split."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

from mlembed.data.datamodule import ShardDataModule, StageSettings
from mlembed.data.manifest import ShardManifest
from mlembed.data.stream import read_samples
from mlembed.demo.data import DemoSettings, build_demo, clean

SETTINGS = DemoSettings(locales=["de", "fr", "ru", "ja", "ar", "pt_BR"], languages=["english", "spanish", "russian"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"), SETTINGS)


@functools.cache
def samples_of(directory: str) -> list[dict]:
    manifest = ShardManifest.load(directory)
    return list(read_samples([str(Path(directory) / s.path) for s in manifest.shards]))


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_both_stages_get_shards(demo):
    stage1 = ShardManifest.load(demo.path("stage1/train")).sources()
    stage2 = ShardManifest.load(demo.path("stage2/train")).sources()
    assert set(stage1) == {"translate-latin", "translate-cyrillic", "translate-cjk", "translate-arabic"}
    assert {e["task"] for e in stage1.values()} == {"bitext"}
    assert {"langid", "dialogue-latin", "dialogue-cyrillic", "translate-instr-latin"} <= set(stage2)
    assert stage2["langid"]["task"] == "classification" and stage2["dialogue-latin"]["task"] == "retrieval"
    assert sum(e["samples"] for e in stage1.values()) > 1000
    assert ShardManifest.load(demo.path("stage1/val")).sources().keys() == stage1.keys()
    for row in samples_of(demo.path("stage2/train"))[:200]:
        assert row["instruction"]
    assert all(row["instruction"] is None for row in samples_of(demo.path("stage1/train"))[:200])


def test_the_manifests_name_the_languages_and_instructions_of_the_demo(demo):
    stage1 = ShardManifest.load(demo.path("stage1/train"))
    stage2 = ShardManifest.load(demo.path("stage2/train"))
    # Django locales (pt_BR as pt-BR) against English, chatterbot folders by their language's tag.
    assert set(stage1.languages()) == {"en", "de", "fr", "ru", "ja", "ar", "pt-BR"}
    assert stage1.languages()["en"] == sum(e["samples"] for e in stage1.sources().values())
    assert {"es", "ru", "en"} <= set(stage2.languages()) and "english" not in stage2.languages()
    assert stage1.instructions() == {}  # stage 1 trains without instructions
    instructions = stage2.instructions()
    assert set(instructions) == set(stage2.sources())
    assert instructions["langid"] == {"Identify the language of the given text": stage2.sources()["langid"]["samples"]}


def test_eval_files_have_the_agreed_format(demo):
    bitext, dialogue = read_jsonl(demo.path("eval/bitext.jsonl")), read_jsonl(demo.path("eval/dialogue.jsonl"))
    assert bitext and dialogue
    assert all(set(r) == {"id", "lang", "src", "tgt"} for r in bitext)
    assert all(set(r) == {"id", "lang", "query", "positive"} for r in dialogue)
    assert {r["lang"] for r in bitext} == set(SETTINGS.locales)
    assert {r["lang"] for r in dialogue} == set(SETTINGS.languages)
    assert len({r["id"] for r in bitext}) == len(bitext)
    # The split is by English string: a held-out string is held out in every locale that has it.
    held = {r["src"] for r in bitext}
    train_queries = {r["query"] for r in samples_of(demo.path("stage1/train"))}
    assert not held & train_queries
    share = len(bitext) / (len(bitext) + demo.counts["stage1/train"])
    assert 0.1 < share < 0.3


def test_held_out_text_never_reaches_training_shards(demo):
    held = set()
    for r in read_jsonl(demo.path("eval/bitext.jsonl")):
        held |= {r["src"], r["tgt"]}
    for r in read_jsonl(demo.path("eval/dialogue.jsonl")):
        held |= {r["query"], r["positive"]}
    for split in ("stage1/train", "stage2/train"):
        for row in samples_of(demo.path(split)):
            texts = {row["query"], row["positive"], *row["negatives"]}
            assert not texts & held, (split, row["id"])


def test_negatives_never_equal_the_positive_and_text_is_clean(demo):
    placeholder = re.compile(r"%\(|%s|%d|\{\d*\}|<[a-z/][^>]*>")
    for split in ("stage1/train", "stage2/train", "stage1/val", "stage2/val"):
        for row in samples_of(demo.path(split)):
            assert row["positive"] not in row["negatives"]
            assert len(row["negatives"]) >= (3 if split.endswith("train") else 1)
            if row["source"].startswith("translate"):
                assert not placeholder.search(row["query"] + row["positive"]), row


def test_clean_strips_placeholders_and_tags():
    assert clean("Delete %(name)s <b>now</b> or %s in {0} days &amp; more") == "Delete now or in days & more"


def test_rebuild_is_skipped_when_complete(demo):
    marker = Path(demo.path("demo.json"))
    stamp = marker.stat().st_mtime_ns
    again = build_demo(demo.root, SETTINGS)
    assert again.counts == demo.counts
    assert marker.stat().st_mtime_ns == stamp


def test_datamodule_streams_the_demo(demo, tokenizer):
    dm = ShardDataModule(
        StageSettings([demo.path("stage1/train")], steps=2, batch_size=8, val_shards=[demo.path("stage1/val")]),
        StageSettings([demo.path("stage2/train")], steps=2, batch_size=8, instructions=True,
                      val_shards=[demo.path("stage2/val")]),
        tokenizer=tokenizer,
    )
    batches = list(dm.train_dataloader())
    assert [b["stage"] for b in batches] == [1, 1, 2, 2]
    val_sources = {b["source"] for b in dm.val_dataloader()}
    assert "translate-latin" in val_sources and "dialogue-latin" in val_sources
