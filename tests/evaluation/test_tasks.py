"""Retrieval, STS and bitext metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from mlembed.evaluation.bitext import BitextTask
from mlembed.evaluation.ranking import ranking_metrics
from mlembed.evaluation.retrieval import RetrievalSet, RetrievalTask
from mlembed.evaluation.sts import STSTask
from tests.evaluation.conftest import TableEncoder

AXES = {"x": [1.0, 0.0, 0.0], "y": [0.0, 1.0, 0.0], "z": [0.0, 0.0, 1.0]}


def one_set(queries: dict[str, str], corpus: dict[str, str], qrels: dict) -> dict[str, RetrievalSet]:
    return {"all": RetrievalSet(queries, corpus, qrels)}


def test_perfect_retrieval_scores_one():
    enc = TableEncoder({"qx": AXES["x"], "qy": AXES["y"], "dx": AXES["x"], "dy": AXES["y"], "dz": AXES["z"]})
    task = RetrievalTask(one_set({"1": "qx", "2": "qy"}, {"a": "dx", "b": "dy", "c": "dz"},
                                 {"1": {"a": 1}, "2": {"b": 1}}))
    scores = task.evaluate(enc, rank=None, depth=None, dims=[3])[3]
    assert scores == {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@1": 1.0, "recall@10": 1.0}


def test_swapped_pair_gives_known_mrr_and_ndcg():
    # Query 2's relevant document ranks second (behind query 1's): MRR = (1 + 1/2) / 2.
    enc = TableEncoder({"q1": [1.0, 0.0], "q2": [0.9, 0.1], "d1": [1.0, 0.0], "d2": [0.0, 1.0]})
    task = RetrievalTask(one_set({"1": "q1", "2": "q2"}, {"a": "d1", "b": "d2"}, {"1": {"a": 1}, "2": {"b": 1}}))
    scores = task.evaluate(enc, rank=None, depth=None, dims=[2])[2]
    assert scores["mrr@10"] == pytest.approx(0.75)
    assert scores["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert scores["recall@1"] == pytest.approx(0.5)
    assert scores["recall@10"] == pytest.approx(1.0, abs=1e-5)


def test_graded_ndcg_matches_hand_computation():
    # Ranking a (rel 1), b (rel 2): DCG = 1 + 2/log2(3); ideal = 2 + 1/log2(3).
    scores, relevance = torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([[1.0, 2.0, 0.0]])
    metrics = ranking_metrics(scores, relevance)
    assert float(metrics["ndcg@10"]) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


@pytest.mark.parametrize("docs", [5, 40])
def test_ranking_metrics_match_torchmetrics_with_indexes(docs):
    from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

    generator = torch.Generator().manual_seed(docs)
    scores = torch.rand(30, docs, generator=generator)  # distinct floats: no ties
    relevance = (torch.rand(30, docs, generator=generator) < 0.15) * torch.randint(1, 4, (30, docs), generator=generator)
    relevance[:, 0] = relevance[:, 0].clamp(min=1)  # every query has a relevant document
    relevance = relevance.float()
    ours = {m: float(v.mean()) for m, v in ranking_metrics(scores, relevance).items()}
    indexes = torch.arange(30)[:, None].expand(30, docs).flatten()  # one distinct index per query
    preds, target = scores.flatten(), relevance.flatten()
    reference = {
        "ndcg@10": RetrievalNormalizedDCG(top_k=10)(preds, target, indexes=indexes),
        "mrr@10": RetrievalMRR(top_k=10)(preds, target > 0, indexes=indexes),
        "recall@1": RetrievalRecall(top_k=1)(preds, target > 0, indexes=indexes),
        "recall@10": RetrievalRecall(top_k=10)(preds, target > 0, indexes=indexes),
    }
    assert ours == pytest.approx({m: float(v) for m, v in reference.items()}, abs=1e-6)


def test_retrieval_keeps_each_language_to_its_own_corpus():
    # The German query's nearest document overall is French; within its own corpus it is found first.
    enc = TableEncoder({"q-de": [1.0, 0.0], "d-de": [0.8, 0.6], "x-de": [0.0, 1.0], "d-fr": [1.0, 0.0],
                        "q-fr": [1.0, 0.0]})
    sets = {"de": RetrievalSet({"q": "q-de"}, {"d": "d-de", "x": "x-de"}, {"q": {"d": 1}}),
            "fr": RetrievalSet({"q": "q-fr"}, {"d": "d-fr"}, {"q": {"d": 1}})}
    scores = RetrievalTask(sets).evaluate(enc, rank=None, depth=None, dims=[2])[2]
    assert scores["mrr@10"] == 1.0
    assert scores["ndcg@10/de"] == scores["ndcg@10/fr"] == 1.0


def test_retrieval_beyond_top_k_counts_as_a_miss():
    # 12 distractors beat the relevant document: it is outside the top 10, so MRR@10 and Recall@10 are 0.
    table = {"q": [1.0, 0.0], "rel": [0.0, 1.0], **{f"n{i}": [1.0, 0.01 * i] for i in range(12)}}
    corpus = {"rel": "rel", **{f"n{i}": f"n{i}" for i in range(12)}}
    task = RetrievalTask(one_set({"q": "q"}, corpus, {"q": {"rel": 1}}))
    scores = task.evaluate(TableEncoder(table), rank=None, depth=None, dims=[2])[2]
    assert scores["mrr@10"] == 0.0 and scores["recall@10"] == 0.0 and scores["ndcg@10"] == 0.0


def test_retrieval_instruction_goes_to_queries_only():
    enc = TableEncoder({"qx": AXES["x"], "dx": AXES["x"]})
    task = RetrievalTask(one_set({"1": "qx"}, {"a": "dx"}, {"1": {"a": 1}}), query_instruction="find it")
    task.evaluate(enc, rank=4, depth=2, dims=[3])
    assert [(texts, instruction) for texts, _, _, instruction in enc.calls] == [(["qx"], "find it"), (["dx"], None)]
    assert all(call[1:3] == (4, 2) for call in enc.calls)


def test_retrieval_without_judged_queries_fails_clearly():
    with pytest.raises(ValueError, match="no query has a relevant document"):
        RetrievalTask(one_set({"1": "q"}, {"a": "d"}, {"1": {"missing": 1}}), name="mine")


def test_sts_monotone_scores_give_spearman_one():
    enc = TableEncoder({"a": [1.0, 0.0], "b": [1.0, 0.1], "c": [1.0, 1.0], "d": [0.0, 1.0]})
    # Cosines a-b > a-c > a-d; gold scores in the same order but on another, non-linear scale.
    task = STSTask(["a", "a", "a"], ["b", "c", "d"], [5.0, 1.0, 0.0])
    scores = task.evaluate(enc, rank=None, depth=None, dims=[2])[2]
    assert scores["spearman"] == pytest.approx(1.0, abs=1e-5)
    assert 0.5 < scores["pearson"] < 1.0


def test_sts_reversed_scores_give_spearman_minus_one():
    enc = TableEncoder({"a": [1.0, 0.0], "b": [1.0, 0.1], "c": [1.0, 1.0], "d": [0.0, 1.0]})
    scores = STSTask(["a", "a", "a"], ["b", "c", "d"], [0.0, 1.0, 2.0]).evaluate(enc, rank=None, depth=None, dims=[2])
    assert scores[2]["spearman"] == pytest.approx(-1.0, abs=1e-5)


def test_bitext_identity_gives_accuracy_one():
    enc = TableEncoder({"hello": AXES["x"], "hallo": AXES["x"], "cat": AXES["y"], "Katze": AXES["y"],
                        "tea": AXES["z"], "Tee": AXES["z"]})
    task = BitextTask(["hello", "cat", "tea"], ["hallo", "Katze", "Tee"], ["de"] * 3)
    scores = task.evaluate(enc, rank=None, depth=None, dims=[3])[3]
    assert scores == {"accuracy": 1.0, "accuracy/src2tgt": 1.0, "accuracy/tgt2src": 1.0, "accuracy/de": 1.0}


def test_bitext_crafted_confusion_gives_known_accuracy():
    # "cat" is nearest to "Tee" (a forward miss); every target's nearest source is still right.
    # de: forward 2/3, backward 3/3 -> 5/6. fr: perfect. Averages over languages.
    enc = TableEncoder({"hello": [1.0, 0.0, 0.0], "cat": [0.0, 0.6, 0.8], "tea": [0.0, 0.5, 0.866],
                        "hallo": [1.0, 0.0, 0.0], "Katze": [0.0, 1.0, 0.0], "Tee": [0.0, 0.5, 0.866],
                        "chat": [0.0, 1.0, 0.0]})
    task = BitextTask(["hello", "cat", "tea", "cat"], ["hallo", "Katze", "Tee", "chat"], ["de", "de", "de", "fr"])
    scores = task.evaluate(enc, rank=None, depth=None, dims=[3])[3]
    assert scores["accuracy/de"] == pytest.approx(5 / 6)
    assert scores["accuracy/fr"] == 1.0
    assert scores["accuracy/src2tgt"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["accuracy/tgt2src"] == 1.0
    assert scores["accuracy"] == pytest.approx((5 / 6 + 1) / 2)


def test_bitext_duplicate_sentences_are_not_misses():
    # Two pairs share the English text; either copy is a correct neighbour.
    enc = TableEncoder({"yes": AXES["x"], "ja": AXES["x"], "no": AXES["y"], "nein": AXES["y"]})
    task = BitextTask(["yes", "yes", "no"], ["ja", "ja", "nein"], ["de"] * 3)
    assert task.evaluate(enc, rank=None, depth=None, dims=[3])[3]["accuracy"] == 1.0


def test_each_task_embeds_each_distinct_text_once_per_call():
    enc = TableEncoder({"a": AXES["x"], "b": [1.0, 1.0, 0.0], "c": AXES["z"]})
    STSTask(["a", "a", "b"], ["b", "c", "c"], [1.0, 2.0, 3.0]).evaluate(enc, rank=None, depth=None, dims=[1, 2, 3])
    assert [texts for texts, *_ in enc.calls] == [["a", "b", "c"]]


def test_dim_prefix_is_cut_before_normalising():
    # At dim 1 both targets look identical to the source; at dim 2 the second axis separates them.
    enc = TableEncoder({"s1": [1.0, 1.0], "s2": [1.0, -1.0], "t1": [1.0, 1.0], "t2": [1.0, -1.0]})
    scores = BitextTask(["s1", "s2"], ["t1", "t2"], ["xx", "xx"]).evaluate(enc, rank=None, depth=None, dims=[1, 2])
    assert scores[2]["accuracy"] == 1.0
    assert scores[1]["accuracy"] == 0.5  # ties go to the first candidate
