"""Streaming: exactly-once passes, homogeneous mixed batches, rank/worker splits, negatives, bucketing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mlembed.data.batching import Collator, bucket_batches, pick_negatives
from mlembed.data.datamodule import LoaderSettings, ShardDataModule, StageSettings
from mlembed.data.sources import resolve_sources
from mlembed.data.stream import EpochStream, StagePlan, TrainStream
from mlembed.text import text_hash

from .conftest import SOURCES


def plan(shard_dir, tokenizer, steps=40, batch_size=4, weights=None, instructions=False, stage=1) -> StagePlan:
    sources = resolve_sources([str(shard_dir)], weights, "--data.stage1")
    return StagePlan(stage, steps, batch_size, sources, Collator(tokenizer, stage=stage, instructions=instructions))


def test_epoch_pass_yields_every_sample_exactly_once(shard_dir, tokenizer):
    stream = EpochStream([plan(shard_dir, tokenizer, batch_size=7)], bucket_batches=4)
    batches = list(stream)
    ids = Counter(i for b in batches for i in b["ids"])
    assert sum(ids.values()) == sum(n for _, n in SOURCES.values())
    assert set(ids.values()) == {1}
    assert ids.keys() == {f"{s}-{i}" for s, (_, n) in SOURCES.items() for i in range(n)}
    for batch in batches:  # homogeneous, and ids match the source
        assert all(i.startswith(batch["source"] + "-") for i in batch["ids"])


def test_epoch_pass_over_two_ranks_is_disjoint_with_equal_counts(shard_dir, tokenizer):
    per_rank = [list(EpochStream([plan(shard_dir, tokenizer, batch_size=3)], rank=r, world=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    assert [len(b["ids"]) for b in per_rank[0]] == [len(b["ids"]) for b in per_rank[1]]  # shapes agree too
    ids = [{i for b in batches for i in b["ids"]} for batches in per_rank]
    assert not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == 120  # every source here has an even size: nothing is cut


def test_batches_are_homogeneous_and_follow_the_mixing_weights(shard_dir, tokenizer):
    weights = {"alpha": 5.0, "beta": 3.0, "gamma": 2.0}
    stream = TrainStream([plan(shard_dir, tokenizer, steps=400, batch_size=2, weights=weights)], seed=3)
    plan_ = stream.plans[0]
    # Source choice alone (cheap) over many steps, then a chi-square test at the 0.1% level (2 dof: 13.8).
    counts = Counter(plan_.source_of(i, 3).name for i in range(4000))
    chi2 = sum((counts[s] - 4000 * w / 10) ** 2 / (4000 * w / 10) for s, w in weights.items())
    assert chi2 < 13.8, counts
    observed = Counter()
    for batch in stream.iter_slot(0, 0):
        observed[batch["source"]] += 1
        assert {i.rsplit("-", 1)[0] for i in batch["ids"]} == {batch["source"]}
        assert batch["task"] == SOURCES[batch["source"]][0]
    assert sum(observed.values()) == 400
    assert observed == Counter(plan_.source_of(i, 3).name for i in range(400))


def test_default_weights_follow_manifest_sizes(shard_dir):
    sources = resolve_sources([str(shard_dir)], None, "--data.stage1")
    assert {s.name: s.weight for s in sources} == {"alpha": 60.0, "beta": 40.0, "gamma": 20.0}


def test_two_ranks_two_workers_disjoint_and_equal(shard_dir, tokenizer):
    # Four (rank, worker) slots: alpha (6 shards) and beta (4) are split by shard, gamma (2 shards, fewer
    # than slots) by sample. A slot that used up its share starts a new epoch of the SAME share, so the ids
    # of different slots never meet, however long the run.
    made = {}
    for rank in range(2):
        stream = TrainStream([plan(shard_dir, tokenizer, steps=40, batch_size=2)], workers=2, rank=rank, world=2)
        for worker in range(2):
            made[rank, worker] = list(stream.iter_slot(worker, 0))
    ids = {slot: {i for b in batches for i in b["ids"]} for slot, batches in made.items()}
    slots = list(ids)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not ids[slots[a]] & ids[slots[b]], (slots[a], slots[b])
    assert len(set.union(*ids.values())) > 100  # and together they cover (nearly) the whole data
    for batches in made.values():
        assert all(len(set(b["ids"])) == len(b["ids"]) for b in batches)  # no sample twice in a batch
    for rank in range(2):
        assert len(made[rank, 0]) == len(made[rank, 1]) == 20
        # Same step, same source on both ranks (the cross-rank negatives share a source).
        assert [b["source"] for b in made[rank, 0]] == [b["source"] for b in made[0, 0]]
        assert [b["source"] for b in made[rank, 1]] == [b["source"] for b in made[0, 1]]


def test_real_dataloader_with_two_workers_matches_the_single_process_order(shard_dir, tokenizer):
    settings = StageSettings([str(shard_dir)], steps=6, batch_size=3)
    one = ShardDataModule(settings, loader=LoaderSettings(num_workers=2), tokenizer=tokenizer)
    ids = [b["ids"] for b in one.train_dataloader()]
    stream = one.train_stream()
    expected = [b["ids"] for pair in zip(stream.iter_slot(0, 0), stream.iter_slot(1, 0)) for b in pair]
    assert ids == expected


def test_negatives_are_exactly_n_and_never_the_positive():
    rng = random.Random(0)
    rows = [{"id": str(i), "source": "s", "positive": f"p{i}", "negatives": [f"n{i}.{k}" for k in range(i)]}
            for i in range(4)]
    rows[3]["negatives"].append("p3")  # a mined negative equal to the positive must never be used
    flat = pick_negatives(rows, 3, rng)
    assert len(flat) == 12
    for i, row in enumerate(rows):
        mine = flat[3 * i : 3 * i + 3]
        assert row["positive"] not in mine
        own = [n for n in mine if n.startswith(f"n{i}.")]
        assert len(own) == min(i, 3)  # a row keeps all its own negatives before any padding
        assert all(n in own or n in {r["positive"] for r in rows} for n in mine)


def test_no_negatives_and_no_other_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="has no negatives"):
        pick_negatives([{"id": "x", "source": "s", "positive": "p", "negatives": []}], 1, random.Random(0))


def test_batch_follows_the_contract(shard_dir, tokenizer):
    p = plan(shard_dir, tokenizer, batch_size=4, instructions=True, stage=2)
    for batch in EpochStream([p]):
        b, n = len(batch["ids"]), batch["num_negatives"]
        assert n == {"retrieval": 7, "clustering": 9, "sts": 7}[batch["task"]]  # the reference's retrieval list
        assert batch["stage"] == 2
        assert batch["query"]["input_ids"].shape[0] == batch["positive"]["input_ids"].shape[0] == b
        assert batch["query"]["input_ids"].shape == batch["query"]["attention_mask"].shape
        assert ("negatives" in batch) == (n > 0)
        if n:
            assert batch["negatives"]["input_ids"].shape[0] == b * n
        assert batch["query_hash"].shape == batch["positive_hash"].shape == (b,)
    text = tokenizer.tokenizer.decode(batch["query"]["input_ids"][0], skip_special_tokens=True)
    assert text.startswith("instruct : do ")  # the template "Instruct: {instruction}\nQuery: {query}"


def test_query_hash_ignores_the_instruction(shard_dir, tokenizer):
    with_instr = next(iter(EpochStream([plan(shard_dir, tokenizer, instructions=True)])))
    without = next(iter(EpochStream([plan(shard_dir, tokenizer, instructions=False)])))
    assert with_instr["ids"] == without["ids"]
    assert with_instr["query_hash"].tolist() == without["query_hash"].tolist()
    assert with_instr["query"]["input_ids"].shape[1] > without["query"]["input_ids"].shape[1]
    assert isinstance(text_hash("x"), int)


def pad_fraction(batches) -> float:
    masks = [b[k]["attention_mask"] for b in batches for k in ("query", "positive")]
    return 1 - sum(m.sum().item() for m in masks) / sum(m.numel() for m in masks)


def test_length_bucketing_reduces_padding(shard_dir, tokenizer):
    def run(pool_batches):
        return list(EpochStream([plan(shard_dir, tokenizer, batch_size=5)], bucket_batches=pool_batches))

    bucketed, plain = pad_fraction(run(8)), pad_fraction(run(1))
    assert bucketed < 0.5 * plain, (bucketed, plain)


def test_bucket_batches_keeps_every_sample_and_full_batches_first():
    samples = [{"query": "x" * n, "positive": ""} for n in range(23)]
    batches = list(bucket_batches(iter(samples), 5, 2, random.Random(0), drop_last=False))
    assert sorted(len(s["query"]) for b in batches for s in b) == list(range(23))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert len(list(bucket_batches(iter(samples), 5, 2, random.Random(0)))) == 4  # drop_last


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory):
    """Sources whose shards split unevenly over ranks: 3 x 10, then 10 + 10 + 5, then one shard of 7."""
    from mlembed.data.shards import write_shards

    from .conftest import write_jsonl

    root = tmp_path_factory.mktemp("uneven")
    rows = [{"id": f"{name}-{i}", "query": f"q {name} {i}" + " x" * (i % 5), "positive": f"p {name} {i}",
             "negatives": [f"n {name} {i}"], "source": name, "task": "retrieval"}
            for name, count in (("three", 30), ("ragged", 25), ("single", 7)) for i in range(count)]
    write_shards([write_jsonl(root / "rows.jsonl", rows)], root / "out", shard_size=10)
    return root / "out"


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("pool", [1, 4])
def test_epoch_pass_gives_every_rank_the_same_batches_for_uneven_shards(uneven_shards, tokenizer, world, pool):
    # Validation gathers on every step: a rank with one batch more (or a batch of another size) hangs DDP.
    p = StagePlan(1, 0, 4, resolve_sources([str(uneven_shards)], None, "--data.val", mixing=False),
                  Collator(tokenizer))
    per_rank = [list(EpochStream([p], rank=r, world=world, bucket_batches=pool)) for r in range(world)]
    shapes = [[(b["source"], len(b["ids"])) for b in batches] for batches in per_rank]
    assert all(s == shapes[0] for s in shapes), shapes
    ids = [[i for b in batches for i in b["ids"]] for batches in per_rank]
    assert len(set().union(*ids)) == sum(len(i) for i in ids)  # disjoint across ranks
    for name, count in (("three", 30), ("ragged", 25), ("single", 7)):
        got = [i for rank_ids in ids for i in rank_ids if i.startswith(name + "-")]
        assert len(got) == world * (count // world)  # at most world - 1 samples of a source are left out
