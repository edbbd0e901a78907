"""Loaders: gensim's Lee corpus, user files in JSONL and TSV, and errors that name the file and line."""

from __future__ import annotations

import re

import pytest

from mlembed.data.records import RecordError
from mlembed.demo.tasks import read_lee
from mlembed.evaluation.datasets import pairs_to_sets, read_beir, read_bitext, read_pairs, read_sts
from tests.evaluation.conftest import write_jsonl


def test_lee_has_all_1225_rated_pairs_of_50_documents():
    text1, text2, scores = read_lee()
    assert len(text1) == len(text2) == len(scores) == 1225
    assert len(set(text1) | set(text2)) == 50
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert any("£" in t for t in text1 + text2)  # the Latin-1 pound sign decodes


def test_sts_jsonl_and_tsv_parse_alike(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [{"text1": "a b", "text2": "c", "score": 4.5}, {"text1": "d", "text2": "e",
                                                                                      "score": "1"}])
    (tmp_path / "s.tsv").write_text("text1\ttext2\tscore\na b\tc\t4.5\n\nd\te\t1\n", encoding="utf-8")
    assert read_sts(tmp_path / "s.jsonl") == read_sts(tmp_path / "s.tsv") == (["a b", "d"], ["c", "e"], [4.5, 1.0])


def test_bitext_tsv_without_language_column(tmp_path):
    (tmp_path / "b.tsv").write_text("hello\thallo\tde\ncat\tchat\n", encoding="utf-8")
    rows = read_bitext(tmp_path / "b.tsv")
    assert [(r["src"], r["tgt"], r["lang"]) for r in rows] == [("hello", "hallo", "de"), ("cat", "chat", "all")]


def test_pairs_become_one_set_per_language_with_shared_positives_merged(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [
        {"id": "1", "lang": "en", "query": "hi", "positive": "hello"},
        {"id": "2", "lang": "en", "query": "hey", "positive": "hello"},
        {"id": "3", "lang": "fr", "query": "salut", "positive": "bonjour"},
    ])
    sets = pairs_to_sets(read_pairs(tmp_path / "d.jsonl"))
    assert sorted(sets) == ["en", "fr"]
    assert list(sets["en"].corpus.values()) == ["hello"]
    assert len(sets["en"].judged_queries()) == 2


def test_beir_directory(tmp_path):
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "what is tea"}])
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "Tea", "text": "a drink"},
                                            {"id": "d2", "text": "a cat"}])
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\n", encoding="utf-8")
    data = read_beir(tmp_path)
    assert data.queries == {"q1": "what is tea"}
    assert data.corpus == {"d1": "Tea. a drink", "d2": "a cat"}
    assert data.qrels == {"q1": {"d1": 2.0}}


@pytest.mark.parametrize(("name", "content", "reader", "message"), [
    ("bad.jsonl", '{"text1": "a", "text2": "b", "score": 1}\n{"text1": "a", "text2": \n', read_sts,
     r"bad\.jsonl:2: not valid JSON"),
    ("bad.jsonl", '{"text1": "a", "score": 1}\n', read_sts, r"bad\.jsonl:1: missing key\(s\) \['text2'\]"),
    ("bad.jsonl", '["a", "b", 1]\n', read_sts, r"bad\.jsonl:1: expected a JSON object"),
    ("bad.tsv", "a\tb\t1\nc\td\n", read_sts, r"bad\.tsv:2: expected 3 tab-separated fields"),
    ("bad.tsv", "a\tb\tgood\n", read_sts, r"bad\.tsv:1: score must be a number, got 'good'"),
    ("bad.tsv", "a\tb\tde\textra\n", read_bitext, r"bad\.tsv:1: expected 2 to 3 tab-separated fields"),
    ("bad.jsonl", '{"query": "q", "positive": ""}\n', read_pairs, r"bad\.jsonl:1: positive must be a non-empty"),
])
def test_malformed_lines_name_file_and_line(tmp_path, name, content, reader, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(RecordError, match=message):
        reader(tmp_path / name)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_bitext(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path / 'nope.jsonl'))}: no such evaluation file"):
        read_bitext(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="no queries.jsonl or queries.tsv"):
        read_beir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path))}: no queries\.jsonl or queries\.tsv"):
        read_beir(tmp_path)
