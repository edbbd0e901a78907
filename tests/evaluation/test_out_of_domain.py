"""The out-of-domain tasks: text from other packages than the demo's training text, scored apart."""

from __future__ import annotations

import pytest

from mlembed.demo.data import django_pairs
from mlembed.demo.tasks import build_tasks, read_sphinx_bitext, read_wiki_passages
from mlembed.evaluation.result import GridResult, GridRow
from mlembed.evaluation.suite import EvalCaps


def test_wiki_passages_are_clean_sentence_pairs():
    rows = read_wiki_passages()
    assert len(rows) > 3000 and {r["lang"] for r in rows} == {"en"}
    assert len({r["id"].split(":")[0] for r in rows}) > 90  # from about a hundred articles
    for row in rows[:300]:
        assert len(row["query"]) >= 40 and 0 < len(row["positive"]) <= 400
        assert "'''" not in row["query"] + row["positive"] and "[[" not in row["query"] + row["positive"]
        assert row["query"] not in row["positive"]


def test_sphinx_bitext_is_multilingual_and_disjoint_from_django():
    rows = read_sphinx_bitext()
    langs = {r["lang"] for r in rows}
    assert len(langs) > 40 and {"fr", "ru", "zh_CN", "ja"} <= langs
    django = {t for pairs in django_pairs(["fr", "de"]).values() for pair in pairs for t in pair}
    french = [r for r in rows if r["lang"] in ("fr", "de")]
    assert len(french) > 500 and not {t for r in french for t in (r["src"], r["tgt"])} & django
    assert all("%" not in r["src"] and "{" not in r["src"] for r in rows[:2000])  # placeholders stripped


def test_wiki_task_holds_distractors_and_one_positive_per_query():
    task = build_tasks(["wiki"], caps=EvalCaps(max_passages=50))[0]
    (passages,) = task.sets.values()
    assert len(passages.queries) == 50 and len(passages.corpus) == 100
    assert all(len(rel) == 1 and next(iter(rel)) in passages.corpus for rel in passages.qrels.values())
    other = build_tasks(["wiki"], caps=EvalCaps(max_passages=50, seed=1))[0]
    assert next(iter(other.sets.values())).queries != passages.queries  # the seed draws the sample


def test_only_the_demo_sources_are_in_domain(demo_dir):
    tasks = build_tasks(["lee", "wiki", "sphinx", "bitext", "dialogue"], data_dir=demo_dir,
                        caps=EvalCaps(max_passages=10, max_pairs_per_language=5, max_queries_per_language=5))
    assert {t.name: t.in_domain for t in tasks} == {"lee": False, "wiki": False, "sphinx": False, "bitext": True,
                                                    "dialogue": True}


def test_point_scores_split_in_and_out_of_domain(tmp_path):
    rows = [GridRow(64, 6, 384, 1, 4, task, "m", value)
            for task, value in (("lee", 0.2), ("wiki", 0.6), ("bitext", 0.9), ("dialogue", 0.5))]
    result = GridResult(rows, {"lee": "m", "wiki": "m", "bitext": "m", "dialogue": "m"},
                        in_domain=frozenset({"bitext", "dialogue"}))
    (point,) = result.points()
    assert point.score == pytest.approx(0.55)
    assert point.domain_score(False) == pytest.approx(0.4) and point.domain_score(True) == pytest.approx(0.7)
    markdown = result.to_markdown()
    assert "## out-of-domain score (mean of lee, wiki)" in markdown and "| 64 | 6 | 0.4000 |" in markdown
    assert "## in-domain score (mean of bitext, dialogue)" in markdown and "| 64 | 6 | 0.7000 |" in markdown
