"""Fixtures of the data tests: small synthetic record files and their shards, and the MiniLM tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mlembed.data.shards import write_shards
from mlembed.text import TextTokenizer

SOURCES = {"alpha": ("retrieval", 60), "beta": ("clustering", 40), "gamma": ("sts", 20)}
"""Synthetic sources: name -> (task, samples)."""
WORDS = "river stone cloud lantern meadow copper whisper harbor violet engine garden falcon".split()


def make_records(seed: int = 0) -> list[dict]:
    """Records of every source in SOURCES, with texts of widely varying length and a few negatives."""
    rng = random.Random(seed)
    out = []
    for source, (task, count) in SOURCES.items():
        for i in range(count):
            length = rng.choice([2, 3, 4, 20, 40])  # a bimodal mix so that bucketing has something to do
            query = " ".join(rng.choice(WORDS) for _ in range(length))
            positive = f"{source} {i} " + " ".join(rng.choice(WORDS) for _ in range(length))
            negatives = [f"{source} neg {i}.{k}" for k in range(rng.randint(0, 10))]
            out.append({"id": f"{source}-{i}", "query": query, "positive": positive, "negatives": negatives,
                        "instruction": f"do {task}", "source": source, "task": task})
    rng.shuffle(out)
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings written as-is) one per line."""
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer(minilm_dir) -> TextTokenizer:
    return TextTokenizer(str(minilm_dir), max_seq_length=64)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """Shards of make_records(), 10 samples per shard (6 + 4 + 2 shards)."""
    root = tmp_path_factory.mktemp("shards")
    source = write_jsonl(root / "records.jsonl", make_records())
    write_shards([source], root / "out", shard_size=10)
    return root / "out"
