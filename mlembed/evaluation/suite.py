"""How big each evaluation set may be, and building the tasks of a user's files (the caps keep a CPU grid cheap).

A user task spec is ``kind:path``: ``sts:FILE``, ``bitext:FILE``, ``pairs:FILE`` (pair retrieval) or
``retrieval:DIR`` (BEIR layout), in the formats of ``mlembed.evaluation.datasets``; the task is named after the
file (or directory). Named tasks (``lee``, ``dialogue``...) are the demo's: ``mlembed.demo.tasks``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mlembed.evaluation.bitext import BitextTask
from mlembed.evaluation.datasets import pairs_to_sets, read_beir, read_bitext, read_pairs, read_sts
from mlembed.evaluation.retrieval import RetrievalSet, RetrievalTask
from mlembed.evaluation.sts import STSTask
from mlembed.evaluation.task import Task

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


def user_task(spec: str, caps: EvalCaps, batch_size: int = 64) -> Task:
    """The task of one ``kind:path`` spec, capped by ``caps``."""
    kind, _, path = spec.partition(":")
    if kind not in USER_KINDS:
        raise ValueError(f"--tasks {spec!r}: unknown kind {kind!r}; use one of {list(USER_KINDS)} as KIND:PATH")
    name = Path(path).stem
    if kind == "sts":
        return sts_task(*read_sts(path), name, caps, batch_size)
    if kind == "bitext":
        return bitext_task(read_bitext(path), name, caps, batch_size)
    if kind == "pairs":
        return RetrievalTask(pair_sets(read_pairs(path), caps), name=name, batch_size=batch_size)
    return RetrievalTask({name: read_beir(path)}, name=Path(path).name, batch_size=batch_size)


def check_names(tasks: Sequence[Task]) -> list[Task]:
    """``tasks``, refused when two share a name (their scores would overwrite each other)."""
    names = [t.name for t in tasks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"--tasks: two tasks are named {duplicated}; rename a file")
    return list(tasks)


def sts_task(text1, text2, scores, name: str, caps: EvalCaps, batch_size: int) -> STSTask:
    keep = sample(range(len(scores)), caps.max_sts_pairs, caps.seed)
    return STSTask([text1[i] for i in keep], [text2[i] for i in keep], [scores[i] for i in keep], name=name,
                   batch_size=batch_size)


def bitext_task(rows: list[dict], name: str, caps: EvalCaps, batch_size: int, in_domain: bool = False) -> BitextTask:
    rows = cap_languages(rows, caps)
    return BitextTask([r["src"] for r in rows], [r["tgt"] for r in rows], [r["lang"] for r in rows], name=name,
                      batch_size=batch_size, in_domain=in_domain)


def pair_sets(rows: list[dict], caps: EvalCaps) -> dict[str, RetrievalSet]:
    """Pair-retrieval rows, capped by ``max_queries_per_language``, as one retrieval set per language."""
    return pairs_to_sets(cap_languages(rows, caps, caps.max_queries_per_language))


def cap_languages(rows: list[dict], caps: EvalCaps, per_language: int | None = None) -> list[dict]:
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
        kept += [group[i] for i in sample(range(len(group)), cap, caps.seed)]
    return kept


def sample(indices: range, cap: int | None, seed: int) -> list[int]:
    """``cap`` of ``indices`` drawn with ``seed``, in their original order (all when ``cap`` is None)."""
    if cap is None or cap >= len(indices):
        return list(indices)
    return sorted(random.Random(seed).sample(indices, cap))
