"""Evaluation sets from files (STS, bitext, retrieval): the formats a user's own data comes in.

Formats (``.jsonl`` is read as JSON lines, anything else as tab-separated; a TSV header line is optional):

- STS: ``{"text1", "text2", "score"}`` or ``text1<TAB>text2<TAB>score``.
- Bitext: ``{"src", "tgt", "lang"[, "id"]}`` or ``src<TAB>tgt[<TAB>lang]`` (the demo's ``eval/bitext.jsonl``).
- Pair retrieval: ``{"query", "positive", "lang"[, "id"]}`` or ``query<TAB>positive[<TAB>lang]`` (the demo's
  ``eval/dialogue.jsonl``); the corpus of a language is all its positives.
- BEIR retrieval directory: ``queries.jsonl`` (``{"_id" or "id", "text"}``), ``corpus.jsonl`` (``{"_id" or "id",
  "text"[, "title"]}``) and ``qrels.tsv`` (``query-id<TAB>corpus-id<TAB>score``); ``.tsv`` variants of the
  first two hold ``id<TAB>text``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from mlembed.data.records import RecordError
from mlembed.evaluation.readers import parse_float, parse_text, read_rows
from mlembed.evaluation.retrieval import RetrievalSet

DEFAULT_LANG = "all"
"""Language of rows that name none (a TSV without the third column)."""


def read_sts(path: str | Path) -> tuple[list[str], list[str], list[float]]:
    """``(text1, text2, scores)`` of an STS file (JSONL or TSV)."""
    text1, text2, scores = [], [], []
    for number, row in read_rows(path, ("text1", "text2", "score")):
        text1.append(parse_text(row["text1"], path, number, "text1"))
        text2.append(parse_text(row["text2"], path, number, "text2"))
        scores.append(parse_float(row["score"], path, number, "score"))
    return text1, text2, scores


def read_bitext(path: str | Path) -> list[dict]:
    """Rows ``{"id", "lang", "src", "tgt"}`` of a bitext file (JSONL or TSV)."""
    return _text_rows(path, ("src", "tgt"))


def read_pairs(path: str | Path) -> list[dict]:
    """Rows ``{"id", "lang", "query", "positive"}`` of a pair-retrieval file (JSONL or TSV)."""
    return _text_rows(path, ("query", "positive"))


def _text_rows(path: str | Path, fields: tuple[str, str]) -> list[dict]:
    """Rows ``{"id", "lang", *fields}``: two required texts, an optional language (default DEFAULT_LANG)."""
    rows = []
    for number, row in read_rows(path, (*fields, "lang"), optional=1):
        rows.append({
            "id": str(row.get("id", number)),
            "lang": parse_text(row.get("lang", DEFAULT_LANG), path, number, "lang"),
            **{name: parse_text(row[name], path, number, name) for name in fields},
        })
    return rows


def pairs_to_sets(rows: list[dict]) -> dict[str, RetrievalSet]:
    """One retrieval set per language: its queries, a corpus of its distinct positives, one relevant each."""
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_lang[row["lang"]].append(row)
    sets = {}
    for lang, group in by_lang.items():
        # Equal positives are one document (relevant to each of their queries), so ties cannot hide a hit.
        doc_of: dict[str, str] = {}
        for row in group:
            doc_of.setdefault(row["positive"], f"d{len(doc_of)}")
        queries = {f"q{i}:{row['id']}": row["query"] for i, row in enumerate(group)}
        qrels = {qid: {doc_of[row["positive"]]: 1.0} for qid, row in zip(queries, group)}
        sets[lang] = RetrievalSet(queries=queries, corpus={d: t for t, d in doc_of.items()}, qrels=qrels)
    return sets


def read_beir(directory: str | Path) -> RetrievalSet:
    """A BEIR-style directory: queries, corpus and qrels files (see the module docstring)."""
    directory = Path(directory)
    return RetrievalSet(
        queries=_read_texts(_find(directory, "queries")),
        corpus=_read_texts(_find(directory, "corpus")),
        qrels=_read_qrels(_find(directory, "qrels")),
    )


def _find(directory: Path, stem: str) -> Path:
    for suffix in (".jsonl", ".tsv"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    raise FileNotFoundError(f"{directory}: no {stem}.jsonl or {stem}.tsv (a retrieval directory needs queries, "
                            "corpus and qrels)")


def _read_texts(path: Path) -> dict[str, str]:
    texts = {}
    for number, row in read_rows(path, ("id", "text") if path.suffix == ".tsv" else ("text",)):
        key = row.get("_id", row.get("id"))
        if key is None:
            raise RecordError(str(path), number, "missing key '_id' (or 'id')")
        text = parse_text(row["text"], path, number, "text")
        title = row.get("title")
        texts[str(key)] = f"{title}. {text}" if isinstance(title, str) and title.strip() else text
    return texts


def _read_qrels(path: Path) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = defaultdict(dict)
    for number, row in read_rows(path, ("query-id", "corpus-id", "score")):
        qrels[str(row["query-id"])][str(row["corpus-id"])] = parse_float(row["score"], path, number, "score")
    return dict(qrels)
