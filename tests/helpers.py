"""Builders shared by the tests: tiny modules and batches in the format of mlembed/batch.py."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig
from mlembed.cli import main
from mlembed.losses import ContrastiveLoss
from mlembed.module import EmbeddingModule
from mlembed.text import text_hash
from tests.conftest import MINILM_DIR, QWEN_TOKENIZER_DIR, tiny_bert_config, tiny_qwen3_config

QUERIES = ["how do I reset my password", "where is the station", "the cat sat on the mat", "good morning",
           "what time is it", "I like green tea"]
POSITIVES = ["Wie setze ich mein Passwort zurück", "Où est la gare", "die Katze saß auf der Matte",
             "buenos días", "che ore sono", "me gusta el té verde"]
NEGATIVES = ["the weather is nice", "open the window", "a red car", "it is raining", "close the door",
             "a blue bike"]


def tiny_backbone(kind: str, layers: int = 4, hidden: int = 64, max_seq_length: int = 32) -> BackboneConfig:
    """A random-init tiny Qwen3 (real Qwen3 tokenizer) or BERT (real MiniLM tokenizer)."""
    if kind == "qwen3":
        return BackboneConfig(config=tiny_qwen3_config(151669, layers, hidden), tokenizer=str(QWEN_TOKENIZER_DIR),
                              max_seq_length=max_seq_length)
    if kind == "bert":
        return BackboneConfig(config=tiny_bert_config(30522, layers, hidden), tokenizer=str(MINILM_DIR),
                              max_seq_length=max_seq_length)
    raise ValueError(kind)


def tiny_module(kind: str = "bert", *, mel: bool = True, mll: bool = True, mrl: bool = True, rank: int = 32,
                loss: ContrastiveLoss | None = None, init: bool = True, **backbone) -> EmbeddingModule:
    """A tiny module with the axes switched as asked, built and (with MEL) SVD-initialised."""
    module = EmbeddingModule(
        tiny_backbone(kind, **backbone),
        mel=MEL(enabled=mel, rank=rank, min_rank=8),
        mll=MLL(enabled=mll),
        mrl=MRL(enabled=mrl),
        loss=loss or ContrastiveLoss(),
    )
    module.configure_model()
    if mel and init:
        module.init_mel_from_svd()
    return module


def make_batch(module: EmbeddingModule, queries: Sequence[str] = QUERIES, positives: Sequence[str] = POSITIVES,
               negatives: Sequence[str] | None = NEGATIVES, task: str = "retrieval") -> dict:
    """A batch dict with one hard negative per query (or none); ``module`` is an EmbeddingModule or an Encoder."""
    tok = getattr(module, "encoder", module).text_tokenizer
    batch = {
        "query": tok(queries),
        "positive": tok(positives),
        "num_negatives": 0,
        "query_hash": torch.tensor([text_hash(t) for t in queries]),
        "positive_hash": torch.tensor([text_hash(t) for t in positives]),
        "task": task,
        "source": "test",
        "stage": 1,
        "ids": [str(i) for i in range(len(queries))],
    }
    if negatives is not None:
        batch["negatives"] = tok(negatives)
        batch["num_negatives"] = len(negatives) // len(queries)
    return batch


def failure(capsys, argv: list[str]) -> str:
    """Run ``python -m mlembed ARGV`` in-process, which must fail with an error message and an exit code, not an
    exception (a user's mistake gets no traceback); the text the user sees on stderr."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    except Exception as err:
        raise AssertionError(f"{argv[:2]} raised {type(err).__name__} (a traceback) instead of printing: {err}") from err
    assert code not in (0, None), f"{argv[:2]} succeeded on bad input"
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}
