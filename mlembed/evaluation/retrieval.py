"""Retrieval: rank a corpus for each query by cosine similarity; nDCG@10, MRR@10, Recall@1 and @10."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mlembed.encoder import PointEncoder, truncate_normalize
from mlembed.evaluation.embedding import embed_once, unique_index
from mlembed.evaluation.ranking import ranking_metrics
from mlembed.evaluation.task import Scores

TOP_K = 10
"""Cut-off of nDCG, MRR and the deeper Recall."""
CHUNK = 1024
"""Queries scored at once (bounds the [queries, documents] score matrix of a large corpus)."""


@dataclass
class RetrievalSet:
    """Queries, a corpus and relevance judgements (BEIR's layout).

    Args:
        queries: query id -> text.
        corpus: document id -> text.
        qrels: query id -> {document id: relevance > 0}; queries without an entry are not evaluated.
    """

    queries: Mapping[str, str]
    corpus: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, float]]

    def judged_queries(self) -> list[str]:
        """Ids of the queries that have at least one relevant document in the corpus, in query order."""
        return [q for q in self.queries if any(d in self.corpus and r > 0 for d, r in self.qrels.get(q, {}).items())]


@dataclass
class RetrievalTask:
    """One or more retrieval sets (e.g. one per language: each query searches its own set's corpus).

    Metrics pool all queries: ``ndcg@10`` (main), ``mrr@10``, ``recall@1``, ``recall@10``; with several sets,
    also ``ndcg@10/<set>``.

    Args:
        sets: set name (a language) -> its queries, corpus and qrels.
        name: task name in results.
        query_instruction: instruction put before every query (documents get none).
        batch_size: encoder batch size.
    """

    sets: Mapping[str, RetrievalSet]
    name: str = "retrieval"
    query_instruction: str | None = None
    batch_size: int = 64
    main_metric: str = "ndcg@10"
    in_domain: bool = False
    """Whether the texts come from the training data's distribution (held out) rather than from elsewhere."""
    _queries: list[tuple[str, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # (set, query id) of every judged query, fixed once so a query's index is the same at every point.
        self._queries = [(s, q) for s in sorted(self.sets) for q in self.sets[s].judged_queries()]
        if not self._queries:
            raise ValueError(f"retrieval task {self.name}: no query has a relevant document in its corpus")

    def num_texts(self) -> int:
        docs = [text for s in self.sets.values() for text in s.corpus.values()]
        return len(self._queries) + len(unique_index(docs)[0])

    def evaluate(
        self, encoder: PointEncoder, *, rank: int | None, depth: int | None, dims: Sequence[int | None]
    ) -> Scores:
        """Metrics of every dim prefix; queries and documents are each embedded once at (rank, depth)."""
        kw = {"rank": rank, "depth": depth, "batch_size": self.batch_size}
        query_vectors = embed_once(encoder, [self.sets[s].queries[q] for s, q in self._queries],
                                   instruction=self.query_instruction, **kw)
        names = sorted(self.sets)
        doc_ids = {s: list(self.sets[s].corpus) for s in names}
        doc_vectors = embed_once(encoder, [self.sets[s].corpus[d] for s in names for d in doc_ids[s]], **kw)
        query_rows, doc_rows, start = {}, {}, 0
        for s in names:
            query_rows[s] = [i for i, (name, _) in enumerate(self._queries) if name == s]
            doc_rows[s], start = slice(start, start + len(doc_ids[s])), start + len(doc_ids[s])
        relevance = {s: self._relevance(s, doc_ids[s]) for s in names}
        out: Scores = {}
        for dim in dims:
            queries, docs = truncate_normalize(query_vectors, dim), truncate_normalize(doc_vectors, dim)
            per_set = {s: _chunked_metrics(queries[query_rows[s]], docs[doc_rows[s]], relevance[s]) for s in names}
            out[dim] = self._summary(per_set)
        return out

    def _relevance(self, set_name: str, doc_ids: list[str]) -> torch.Tensor:
        """Relevance [set queries, set docs] of the set's judged queries, in ``self._queries`` order."""
        position = {d: j for j, d in enumerate(doc_ids)}
        rows = [q for s, q in self._queries if s == set_name]
        relevance = torch.zeros(len(rows), len(doc_ids))
        for i, query in enumerate(rows):
            for doc, value in self.sets[set_name].qrels[query].items():
                if value > 0 and doc in position:
                    relevance[i, position[doc]] = float(value)
        return relevance

    def _summary(self, per_set: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        """Means over all queries, and nDCG per set when there are several."""
        metrics = {m: float(torch.cat([v[m] for v in per_set.values()]).mean()) for m in next(iter(per_set.values()))}
        if len(per_set) > 1:
            metrics.update({f"ndcg@{TOP_K}/{s}": float(v[f"ndcg@{TOP_K}"].mean()) for s, v in per_set.items()})
        return metrics


def _chunked_metrics(queries: torch.Tensor, docs: torch.Tensor, relevance: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-query metrics of unit query vectors [Q, d] against unit document vectors [D, d]."""
    parts = [ranking_metrics(queries[i : i + CHUNK] @ docs.T, relevance[i : i + CHUNK], TOP_K)  # [chunk, D]
             for i in range(0, len(queries), CHUNK)]
    return {metric: torch.cat([part[metric] for part in parts]) for metric in parts[0]}
