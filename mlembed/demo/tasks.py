"""The demo's evaluation tasks, by name: three out of domain from text shipped in packages, two in domain.

- ``lee``: gensim's Lee corpus as English STS (50 documents, 1,225 rated pairs).
- ``wiki``: passage retrieval on gensim's sample of English Wikipedia (first sentence -> the next ones).
- ``sphinx``: bitext mining on Sphinx's translated messages (about 60 languages; none of it in Django's).
- ``bitext`` / ``dialogue``: the demo's held-out ``DATA_DIR/eval/bitext.jsonl`` / ``eval/dialogue.jsonl``, the
  in-domain tasks (same sources as the demo's training data).

``build_tasks`` takes these names and a user's ``kind:path`` specs (``mlembed.evaluation.suite``) alike: it is
what the ``GridEvaluation`` callback and ``mlembed evaluate --tasks`` read.
"""

from __future__ import annotations

import bz2
import functools
import random
import re
from collections.abc import Sequence
from pathlib import Path

from mlembed.demo.data import DIALOGUE_INSTRUCTION, clean, django_pairs, usable
from mlembed.evaluation.datasets import read_bitext, read_pairs
from mlembed.evaluation.retrieval import RetrievalSet, RetrievalTask
from mlembed.evaluation.suite import (
    USER_KINDS,
    EvalCaps,
    bitext_task,
    check_names,
    pair_sets,
    sts_task,
    user_task,
)
from mlembed.evaluation.task import Task
from mlembed.paths import resolve_path

DEMO_TASKS = ("lee", "wiki", "sphinx", "bitext", "dialogue")
"""Every task of the demo's grid."""
DATA_DIR_TASKS = ("bitext", "dialogue")
"""The tasks that read the demo's held-out files (``--data-dir``); the others ship in packages."""


def build_tasks(
    specs: Sequence[str],
    *,
    data_dir: str | Path | None = None,
    caps: EvalCaps | None = None,
    batch_size: int = 64,
    instructions: bool = True,
) -> list[Task]:
    """The tasks named by ``specs`` (the demo's names and ``kind:path`` specs), capped by ``caps``.

    Args:
        specs: the demo's task names and ``kind:path`` specs.
        data_dir: the demo's output directory (needed by ``bitext`` and ``dialogue``).
        caps: size limits.
        batch_size: encoder batch size of every task.
        instructions: put the demo's training instruction before dialogue queries (as stage 2 did).
    """
    caps = caps or EvalCaps()
    return check_names([
        user_task(spec, caps, batch_size) if ":" in spec else demo_task(spec, data_dir, caps, batch_size, instructions)
        for spec in specs
    ])


def demo_task(name: str, data_dir, caps: EvalCaps, batch_size: int = 64, instructions: bool = True) -> Task:
    """The demo's task ``name`` (see the module docstring), capped by ``caps``."""
    if name == "lee":
        return sts_task(*read_lee(), "lee", caps, batch_size)
    if name == "wiki":
        return RetrievalTask({"en": passage_set(read_wiki_passages(), caps)}, name="wiki", batch_size=batch_size)
    if name == "sphinx":
        return bitext_task(read_sphinx_bitext(), "sphinx", caps, batch_size)
    if name not in DATA_DIR_TASKS:
        raise ValueError(f"--tasks {name!r}: unknown task; built-ins are {list(DEMO_TASKS)}, or KIND:PATH "
                         f"with KIND in {list(USER_KINDS)}")
    if data_dir is None:
        raise ValueError(f"--tasks {name}: reads DATA_DIR/eval/{name}.jsonl, but --data-dir is not set")
    path = Path(data_dir) / "eval" / f"{name}.jsonl"
    if name == "bitext":
        return bitext_task(read_bitext(path), "bitext", caps, batch_size, in_domain=True)
    return RetrievalTask(pair_sets(read_pairs(path), caps), name="dialogue",
                         query_instruction=DIALOGUE_INSTRUCTION if instructions else None, batch_size=batch_size, in_domain=True)


def passage_set(rows: list[dict], caps: EvalCaps) -> RetrievalSet:
    """``max_passages`` queries with their positives, plus as many other passages as distractors."""
    order = list(range(len(rows)))
    random.Random(caps.seed).shuffle(order)
    count = len(rows) if caps.max_passages is None else min(caps.max_passages, len(rows))
    queries, extra = order[:count], order[count : 2 * count]
    corpus = {f"d{i}": rows[i]["positive"] for i in sorted(queries + extra)}
    return RetrievalSet(queries={f"q{i}": rows[i]["query"] for i in sorted(queries)}, corpus=corpus,
                        qrels={f"q{i}": {f"d{i}": 1.0} for i in sorted(queries)})


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
