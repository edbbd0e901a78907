"""MTEBEncoder against the interface mteb calls (no mteb needed): signature, shapes, instructions."""

from __future__ import annotations

import inspect
from enum import Enum
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mlembed.evaluation.mteb_adapter import MTEBEncoder

TEXTS = ["hello world", "good morning", "the cat sleeps"]


class PromptType(str, Enum):
    """Stands in for mteb's PromptType (a str enum with these values)."""

    query = "query"
    passage = "passage"


class Recorder:
    """An Encoder that records its calls and embeds with a fixed random projection of the text length."""

    def __init__(self):
        self.calls = []

    def points(self):
        raise AssertionError("the adapter serves one fixed point")

    def embed(self, texts, *, rank=None, depth=None, instruction=None, batch_size=64):
        self.calls.append({"texts": list(texts), "rank": rank, "depth": depth, "instruction": instruction,
                           "batch_size": batch_size})
        generator = torch.Generator().manual_seed(0)
        return torch.randn(len(texts), 16, generator=generator) * torch.tensor([len(t) for t in texts])[:, None]

    def num_parameters(self, *, rank=None, depth=None):
        return 0


def test_signature_matches_what_mteb_calls():
    params = inspect.signature(MTEBEncoder.encode).parameters
    assert list(params)[:2] == ["self", "sentences"]
    for name in ("task_name", "prompt_type", "batch_size"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is None
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


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
    ("passage", None), (None, "Find the answer"),
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
    np.testing.assert_allclose(np.diag(model.similarity(a, a)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.similarity_pairwise(a, a[::-1]), np.diag(model.similarity(a, a[::-1])), rtol=1e-5)
