"""Evaluation sets from files: text shipped in packages and user/demo data (STS, bitext, retrieval).

Shipped in packages, none of it in the demo's training text: gensim's Lee corpus (STS), gensim's sample of
English Wikipedia (passage retrieval) and Sphinx's translated messages (bitext, about 60 languages).

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

import bz2
import functools
import re
from collections import defaultdict
from pathlib import Path

from mlembed.data.records import RecordError
from mlembed.evaluation.readers import parse_float, parse_text, read_rows
from mlembed.evaluation.retrieval import RetrievalSet
from mlembed.paths import resolve_path

DEFAULT_LANG = "all"
"""Language of rows that name none (a TSV without the third column)."""


def read_lee() -> tuple[list[str], list[str], list[float]]:
    """gensim's Lee corpus: 50 news documents and the mean human rating of all 1,225 pairs (i < j).

    ``similarities0-1.txt`` is a 50 x 50 tab-separated matrix whose upper triangle holds the ratings.
    """
    from gensim.test.utils import datapath

    # The file is Latin-1 (it holds a raw 0xA3 pound sign).
    docs = Path(datapath("lee.cor")).read_text(encoding="latin-1").splitlines()
    matrix = [line.split("\t") for line in Path(datapath("similarities0-1.txt")).read_text().splitlines()]
    if len(docs) != 50 or len(matrix) != 50:
        raise RuntimeError(f"gensim's Lee data changed: {len(docs)} documents, {len(matrix)} rating rows")
    text1, text2, scores = [], [], []
    for i in range(len(docs)):
        for j in range(i + 1, len(docs)):
            text1.append(docs[i])
            text2.append(docs[j])
            scores.append(float(matrix[i][j]))
    return text1, text2, scores


#: Sentence boundaries in Wikipedia prose: end punctuation, space, then a capital, digit, quote or bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
#: What gensim's filter_wiki leaves of the markup: bold/italic quotes, section titles, emptied brackets.
_WIKI_LEFTOVERS = [re.compile(r"'{2,}"), re.compile(r"=+[^=\n]+=+"), re.compile(r"\(\s*[,;]?\s*\)")]


@functools.cache  # parsing takes seconds; a fit's grids and a test session read it once (rows: do not mutate)
def read_wiki_passages() -> list[dict]:
    """Passage retrieval pairs from gensim's sample of English Wikipedia (106 articles, about 3,300 pairs).

    Each paragraph of three sentences or more gives a pair (inverse cloze): the query is its first sentence,
    the positive the next (up to three) sentences, at most 400 characters. Rows: ``{"id", "lang", "query",
    "positive"}`` with ``lang`` ``en``; the id names the article.
    """
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    rows = []
    path = datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    with bz2.open(path, "rb") as handle:
        for title, text, _ in extract_pages(handle):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            prose = filter_wiki(text)
            for pattern in _WIKI_LEFTOVERS:
                prose = pattern.sub(" ", prose)
            for number, paragraph in enumerate(prose.split("\n\n")):
                sentences = _SENTENCE_END.split(" ".join(paragraph.split()))
                if len(sentences) >= 3 and len(sentences[0]) >= 40:
                    rows.append({"id": f"{title}:{number}", "lang": "en", "query": sentences[0],
                                 "positive": " ".join(sentences[1:4])[:400]})
    return rows


@functools.cache  # rows: do not mutate
def read_sphinx_bitext() -> list[dict]:
    """English -> translation pairs of Sphinx's message catalogs (``sphinx/locale/<lang>/LC_MESSAGES``).

    Cleaned as the demo's Django pairs are (placeholders and markup out), and every pair whose English or
    translation also occurs in Django's catalogs is left out, so the demo's training text never holds it. Rows:
    ``{"id", "lang", "src", "tgt"}``.
    """
    import polib

    from mlembed.data.demo import clean, django_pairs, usable

    paths = sorted(Path(resolve_path("pkg://sphinx/locale", "--tasks sphinx")).glob("*/LC_MESSAGES/sphinx.po"))
    locales = [path.parts[-3] for path in paths]
    seen_in_django = {text for pairs in django_pairs(locales).values() for pair in pairs for text in pair}
    rows = []
    for path, locale in zip(paths, locales):
        for entry in polib.pofile(str(path)):
            if entry.fuzzy or entry.obsolete or entry.msgid_plural or not entry.msgstr:
                continue
            src, tgt = clean(entry.msgid), clean(entry.msgstr)
            if "%" in src:  # date formats such as "%b %d, %Y" are not text
                continue
            if usable(src) and usable(tgt) and src.lower() != tgt.lower() and not {src, tgt} & seen_in_django:
                rows.append({"id": f"{locale}:{len(rows)}", "lang": locale, "src": src, "tgt": tgt})
    return rows


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
