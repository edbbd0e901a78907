"""Which tasks to run, how big each may be, and building them (the caps keep a CPU grid cheap).

A task spec is a built-in name or ``kind:path``:

- ``lee``: gensim's Lee corpus as English STS (50 documents, 1,225 rated pairs).
- ``wiki``: passage retrieval on gensim's sample of English Wikipedia (first sentence -> the next ones).
- ``sphinx``: bitext mining on Sphinx's translated messages (about 60 languages; none of it in Django's).
- ``bitext`` / ``dialogue``: the demo's held-out ``DATA_DIR/eval/bitext.jsonl`` / ``eval/dialogue.jsonl``, the
  in-domain tasks (same sources as the demo's training data); every other task is out of domain.
- ``sts:FILE``, ``bitext:FILE``, ``pairs:FILE`` (pair retrieval), ``retrieval:DIR`` (BEIR layout): user data in
  the formats of ``mlembed.evaluation.datasets``; the task is named after the file (or directory).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mlembed.evaluation.bitext import BitextTask
from mlembed.evaluation.datasets import (
    pairs_to_sets,
    read_beir,
    read_bitext,
    read_lee,
    read_pairs,
    read_sphinx_bitext,
    read_sts,
    read_wiki_passages,
)
from mlembed.evaluation.retrieval import RetrievalSet, RetrievalTask
from mlembed.evaluation.sts import STSTask
from mlembed.evaluation.task import Task

DEFAULT_TASKS = ("lee", "wiki", "sphinx", "bitext", "dialogue")
DATA_DIR_TASKS = ("bitext", "dialogue")
"""The built-in tasks that read the demo's held-out files (``--data-dir``); the others ship in packages."""
USER_KINDS = ("sts", "bitext", "pairs", "retrieval")


@dataclass
class EvalCaps:
    """Size limits of the evaluation sets (every distinct text is encoded once per (rank, depth) point)."""

    max_pairs_per_language: int | None = 100
    """Bitext pairs kept per language (seeded sample; None: all)."""
    max_queries_per_language: int | None = 50
    """Pair-retrieval queries kept per language, with their positives (seeded sample; None: all)."""
    max_languages: int | None = 8
    """Languages kept per task, those with the most rows first (None: all)."""
    languages: tuple[str, ...] | None = None
    """Only these languages (before ``max_languages``); None: any."""
    max_sts_pairs: int | None = None
    """STS pairs kept (seeded sample; None: all, 1,225 for Lee)."""
    max_passages: int | None = 200
    """Wikipedia passage queries kept (seeded sample; None: all, about 3,300); the corpus holds their positives
    and as many other passages again."""
    seed: int = 0
    """Seed of the samples."""

    def __post_init__(self) -> None:
        for flag in ("max_pairs_per_language", "max_queries_per_language", "max_languages", "max_sts_pairs",
                     "max_passages"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} ({value}) must be at least 1 (or None for no cap)")
        if self.languages is not None:
            self.languages = tuple(self.languages)

    def smoke(self, batches: int) -> EvalCaps:
        """These caps lowered to a check of every part in seconds, as ``--trainer.fast_dev_run=N`` runs N batches
        of Lightning's loops: a few pairs or queries per language times ``batches``, two languages, and the
        scores are not a measurement."""
        def low(cap: int | None, most: int) -> int:
            return most if cap is None else min(cap, most)

        return replace(
            self, max_pairs_per_language=low(self.max_pairs_per_language, 4 * batches),
            max_queries_per_language=low(self.max_queries_per_language, 4 * batches),
            max_languages=low(self.max_languages, 2), max_sts_pairs=low(self.max_sts_pairs, 16 * batches),
            max_passages=low(self.max_passages, 4 * batches))


def build_tasks(
    specs: Sequence[str] = DEFAULT_TASKS,
    *,
    data_dir: str | Path | None = None,
    caps: EvalCaps | None = None,
    batch_size: int = 64,
    instructions: bool = True,
) -> list[Task]:
    """The tasks named by ``specs`` (see the module docstring), capped by ``caps``.

    Args:
        specs: built-in names and ``kind:path`` specs.
        data_dir: the demo's output directory (needed by ``bitext`` and ``dialogue``).
        caps: size limits.
        batch_size: encoder batch size of every task.
        instructions: put the demo's training instruction before dialogue queries (as stage 2 did).
    """
    caps = caps or EvalCaps()
    tasks = [_build(spec, data_dir, caps, batch_size, instructions) for spec in specs]
    names = [t.name for t in tasks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"--tasks: two tasks are named {duplicated}; rename a file")
    return tasks


def _build(spec: str, data_dir, caps: EvalCaps, batch_size: int, instructions: bool) -> Task:
    kind, _, path = spec.partition(":")
    if not path:
        return _builtin(spec, data_dir, caps, batch_size, instructions)
    if kind not in USER_KINDS:
        raise ValueError(f"--tasks {spec!r}: unknown kind {kind!r}; use one of {list(USER_KINDS)} as KIND:PATH")
    name = Path(path).stem
    if kind == "sts":
        return _sts(*read_sts(path), name, caps, batch_size)
    if kind == "bitext":
        return _bitext(read_bitext(path), name, caps, batch_size)
    if kind == "pairs":
        return RetrievalTask(_pair_sets(read_pairs(path), caps), name=name, batch_size=batch_size)
    return RetrievalTask({name: read_beir(path)}, name=Path(path).name, batch_size=batch_size)


def _builtin(name: str, data_dir, caps: EvalCaps, batch_size: int, instructions: bool) -> Task:
    if name == "lee":
        return _sts(*read_lee(), "lee", caps, batch_size)
    if name == "wiki":
        return RetrievalTask({"en": _passage_set(read_wiki_passages(), caps)}, name="wiki", batch_size=batch_size)
    if name == "sphinx":
        return _bitext(read_sphinx_bitext(), "sphinx", caps, batch_size)
    if name not in DATA_DIR_TASKS:
        raise ValueError(f"--tasks {name!r}: unknown task; built-ins are {list(DEFAULT_TASKS)}, or KIND:PATH "
                         f"with KIND in {list(USER_KINDS)}")
    if data_dir is None:
        raise ValueError(f"--tasks {name}: reads DATA_DIR/eval/{name}.jsonl, but --data-dir is not set")
    path = Path(data_dir) / "eval" / f"{name}.jsonl"
    if name == "bitext":
        return _bitext(read_bitext(path), "bitext", caps, batch_size, in_domain=True)
    instruction = None
    if instructions:
        from mlembed.data.demo import DIALOGUE_INSTRUCTION as instruction
    return RetrievalTask(_pair_sets(read_pairs(path), caps), name="dialogue",
                         query_instruction=instruction, batch_size=batch_size, in_domain=True)


def _passage_set(rows: list[dict], caps: EvalCaps) -> RetrievalSet:
    """``max_passages`` queries with their positives, plus as many other passages as distractors."""
    order = list(range(len(rows)))
    random.Random(caps.seed).shuffle(order)
    count = len(rows) if caps.max_passages is None else min(caps.max_passages, len(rows))
    queries, extra = order[:count], order[count : 2 * count]
    corpus = {f"d{i}": rows[i]["positive"] for i in sorted(queries + extra)}
    return RetrievalSet(queries={f"q{i}": rows[i]["query"] for i in sorted(queries)}, corpus=corpus,
                        qrels={f"q{i}": {f"d{i}": 1.0} for i in sorted(queries)})


def _sts(text1, text2, scores, name: str, caps: EvalCaps, batch_size: int) -> STSTask:
    keep = _sample(range(len(scores)), caps.max_sts_pairs, caps.seed)
    return STSTask([text1[i] for i in keep], [text2[i] for i in keep], [scores[i] for i in keep], name=name,
                   batch_size=batch_size)


def _bitext(rows: list[dict], name: str, caps: EvalCaps, batch_size: int, in_domain: bool = False) -> BitextTask:
    rows = _cap_languages(rows, caps)
    return BitextTask([r["src"] for r in rows], [r["tgt"] for r in rows], [r["lang"] for r in rows], name=name,
                      batch_size=batch_size, in_domain=in_domain)


def _pair_sets(rows: list[dict], caps: EvalCaps) -> dict[str, RetrievalSet]:
    """Pair-retrieval rows, capped by ``max_queries_per_language``, as one retrieval set per language."""
    return pairs_to_sets(_cap_languages(rows, caps, caps.max_queries_per_language))


def _cap_languages(rows: list[dict], caps: EvalCaps, per_language: int | None = None) -> list[dict]:
    """Rows of the allowed languages (most rows first, then by name), each sampled to ``per_language`` rows
    (default: ``caps.max_pairs_per_language``)."""
    counts = Counter(r["lang"] for r in rows)
    langs = [lang for lang in counts if caps.languages is None or lang in caps.languages]
    langs = sorted(langs, key=lambda lang: (-counts[lang], lang))[: caps.max_languages]
    if not langs:
        raise ValueError(f"no rows left after --languages {list(caps.languages or [])} (file has {sorted(counts)})")
    kept = []
    for lang in sorted(langs):
        group = [r for r in rows if r["lang"] == lang]
        cap = caps.max_pairs_per_language if per_language is None else per_language
        kept += [group[i] for i in _sample(range(len(group)), cap, caps.seed)]
    return kept


def _sample(indices: range, cap: int | None, seed: int) -> list[int]:
    """``cap`` of ``indices`` drawn with ``seed``, in their original order (all when ``cap`` is None)."""
    if cap is None or cap >= len(indices):
        return list(indices)
    return sorted(random.Random(seed).sample(indices, cap))
