"""MTEBEncoder against the interface mteb calls: signature (the installed mteb's protocol), shapes, instructions.

A stand-in encoder records the calls; tests/evaluation/test_mteb.py runs mteb's own evaluation on a real model.
"""

from __future__ import annotations

import inspect
from enum import Enum
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mteb.models.models_protocols import EncoderProtocol

from mlembed.integrations.mteb import MTEBEncoder

TEXTS = ["hello world", "good morning", "the cat sleeps"]


class PromptType(str, Enum):
    """mteb 1.x's PromptType (a str enum with these values); mteb 2.x says ``document`` for passages."""

    query = "query"
    passage = "passage"


class Recorder:
    """An Encoder that records its calls and embeds with a fixed random projection of the text length."""

    def __init__(self):
        self.calls = []

    def points(self):
        return SimpleNamespace(ranks=(8, 64), depths=(1, 2, 4), dims=(4, 8, 16))

    def embed(self, texts, *, rank=None, depth=None, instruction=None, batch_size=64):
        self.calls.append({"texts": list(texts), "rank": rank, "depth": depth, "instruction": instruction,
                           "batch_size": batch_size})
        generator = torch.Generator().manual_seed(0)
        return torch.randn(len(texts), 16, generator=generator) * torch.tensor([len(t) for t in texts])[:, None]

    def num_parameters(self, *, rank=None, depth=None):
        return 0


def test_signature_matches_the_installed_mtebs_encoder_protocol():
    params = inspect.signature(MTEBEncoder.encode).parameters
    protocol = inspect.signature(EncoderProtocol.encode).parameters
    assert list(params)[:2] == list(protocol)[:2] == ["self", "inputs"]
    for name, param in protocol.items():
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    for name in ("task_name", "prompt_type", "batch_size"):  # mteb 1.x's keywords too
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is None
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    model = MTEBEncoder(Recorder(), rank=8, depth=2, dim=4, name="org/tiny", revision="r1")
    assert isinstance(model, EncoderProtocol)
    meta = model.mteb_model_meta
    assert (meta.name, meta.revision, meta.embed_dim, meta.n_parameters) == ("org/tiny", "r1", 4, 0)
    assert meta.experiment_name == "depth_2__dim_4__rank_8"
    assert MTEBEncoder(Recorder()).point() == {"rank": 64, "depth": 4, "dim": 16}
    with pytest.raises(ValueError, match="ORG/NAME"):
        MTEBEncoder(Recorder(), name="tiny")


def test_the_point_defaults_to_the_loaded_one():
    loaded = Recorder()
    loaded.rank, loaded.depth, loaded.dim = 8, 2, 4  # what mlembed.load(path, rank=8, depth=2, dim=4) returns
    model = MTEBEncoder(loaded)
    assert model.encode(TEXTS).shape == (3, 4) and loaded.calls[-1]["rank"] == 8 and loaded.calls[-1]["depth"] == 2
    assert MTEBEncoder(loaded, dim=16).encode(TEXTS).shape == (3, 16)


def test_encode_returns_unit_float32_rows_at_the_fixed_point():
    recorder = Recorder()
    model = MTEBEncoder(recorder, rank=64, depth=2, dim=8, batch_size=5)
    vectors = model.encode(TEXTS, task_name="STS12", hf_split="test")
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert recorder.calls[0]["rank"] == 64 and recorder.calls[0]["depth"] == 2 and recorder.calls[0]["batch_size"] == 5
    expected = torch.nn.functional.normalize(recorder.embed(TEXTS)[:, :8], dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, rtol=1e-5)
    model.encode(TEXTS, task_name="STS12", batch_size=2)
    assert recorder.calls[-1]["batch_size"] == 2


@pytest.mark.parametrize(("prompt_type", "expected"), [
    (PromptType.query, "Find the answer"), ("query", "Find the answer"), (PromptType.passage, None),
    ("passage", None), ("document", None), (None, "Find the answer"),
])
def test_instruction_goes_to_queries_and_symmetric_tasks_not_passages(prompt_type, expected):
    recorder = Recorder()
    model = MTEBEncoder(recorder, instructions={"NFCorpus": "Find the answer"})
    model.encode(TEXTS, task_name="NFCorpus", prompt_type=prompt_type)
    assert recorder.calls[-1]["instruction"] == expected


def test_unknown_task_gets_the_default_instruction():
    recorder = Recorder()
    MTEBEncoder(recorder, instructions={"A": "a"}, default_instruction="generic").encode(TEXTS, task_name="B")
    assert recorder.calls[-1]["instruction"] == "generic"
    MTEBEncoder(recorder).encode(TEXTS, task_name="B")
    assert recorder.calls[-1]["instruction"] is None


def test_mteb_2_style_batches_and_task_metadata():
    recorder = Recorder()
    model = MTEBEncoder(recorder, instructions={"Bucc": "Mine the translation"}, dim=4)
    batches = [{"text": TEXTS[:2]}, {"text": TEXTS[2:]}]
    vectors = model.encode(batches, task_metadata=SimpleNamespace(name="Bucc"), prompt_type=None)
    assert vectors.shape == (3, 4)
    assert recorder.calls[-1]["texts"] == TEXTS and recorder.calls[-1]["instruction"] == "Mine the translation"
    with pytest.raises(TypeError, match="expected strings"):
        model.encode([1, 2])


def test_similarity_is_cosine():
    model = MTEBEncoder(Recorder())
    a = model.encode(TEXTS)
    np.testing.assert_allclose(model.similarity(torch.from_numpy(a), a), model.similarity(a, a), rtol=1e-6)
    np.testing.assert_allclose(np.diag(model.similarity(a, a)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.similarity_pairwise(a, a[::-1]), np.diag(model.similarity(a, a[::-1])), rtol=1e-5)
