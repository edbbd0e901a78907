"""Retrieval metrics at cut-off k, for a whole block of queries at once.

torchmetrics' retrieval metrics (``RetrievalNormalizedDCG`` etc. with ``indexes``) loop over queries in Python:
about 20 ms per query for the four metrics at five dims, i.e. 19 s per (rank, depth) for the demo's 800 dialogue
queries and 5 minutes per grid. These are the same definitions (linear gain nDCG, MRR@k, Recall@k) computed on a
[queries, documents] score matrix with tensor operations; tests/evaluation checks them against torchmetrics.
Ties between scores are broken by document order (torchmetrics averages them in nDCG; with float cosine scores
and deduplicated documents they do not occur).
"""

from __future__ import annotations

import torch


def ranking_metrics(scores: torch.Tensor, relevance: torch.Tensor, top_k: int = 10) -> dict[str, torch.Tensor]:
    """Per-query ``ndcg@k``, ``mrr@k``, ``recall@1`` and ``recall@k``.

    Args:
        scores: similarity of each query to each document [Q, D].
        relevance: graded relevance [Q, D] (0: not relevant); every query needs a relevant document.
        top_k: the cut-off k.

    Returns:
        ``{metric: values [Q]}``.
    """
    k = min(top_k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # [Q, k]
    gains = relevance.gather(1, top)  # [Q, k]: relevance in ranked order
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float32) + 2.0)  # [k]
    ideal = relevance.topk(k, dim=1).values  # [Q, k]: the best possible ranking
    hits = gains > 0  # [Q, k]
    first = torch.where(hits.any(1), hits.float().argmax(1) + 1.0, torch.inf)  # 1-based rank of the first hit
    total = (relevance > 0).sum(1).clamp(min=1)  # [Q]
    return {
        f"ndcg@{top_k}": (gains * discount).sum(1) / (ideal * discount).sum(1).clamp(min=1e-12),
        f"mrr@{top_k}": 1.0 / first,
        "recall@1": hits[:, :1].sum(1) / total,
        f"recall@{top_k}": hits.sum(1) / total,
    }
