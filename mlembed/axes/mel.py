"""MEL, Matryoshka Embedding Learning: the token-embedding matrix as nested low-rank factors.

E (vocab x hidden) is replaced by A (vocab x r) and B (r x hidden) from its truncated SVD; each step uses the
leading k ranks, A[:, :k] @ B[:k], with k sampled proportionally to its size (RankSampler callback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MEL:
    """Settings of the MEL axis (nested ranks of the factorised token embedding)."""

    enabled: bool = True
    """Switch the axis on or off (a sweep sets ``--model.mel.enabled=False``)."""
    rank: int = 512
    """Maximum rank r of the factors A (vocab x r) and B (r x hidden); at most the hidden size."""
    ranks: list[int] | None = None
    """Nested ranks sampled during training; default: powers of two from ``min_rank`` below ``rank``, plus ``rank``."""
    min_rank: int = 64
    """Smallest rank of the default rank set."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"--model.mel.rank ({self.rank}) must be positive")
        if self.ranks is not None:
            if len(self.ranks) == 0:
                raise ValueError("--model.mel.ranks is empty: give at least one rank, or null for the default set")
            bad = [k for k in self.ranks if k < 1 or k > self.rank]
            if bad:
                raise ValueError(f"--model.mel.ranks {bad} must lie in [1, --model.mel.rank={self.rank}]")
        if self.min_rank < 1:
            raise ValueError(f"--model.mel.min_rank ({self.min_rank}) must be positive")

    def resolve_ranks(self) -> tuple[int, ...]:
        """The sorted rank set: given ranks, or powers of two from ``min_rank`` below ``rank`` plus ``rank``."""
        if self.ranks is not None:
            return tuple(sorted(set(self.ranks)))
        ranks, k = [], 1 << max(0, math.ceil(math.log2(self.min_rank)))
        while k < self.rank:
            ranks.append(k)
            k *= 2
        return tuple(ranks + [self.rank])

    def callbacks(self) -> list:
        """What training with this axis needs: factors from the SVD before the first step (``SVDInit``), and one
        rank drawn per step, P(k) ∝ k (``RankSampler``); ``EmbeddingModule.configure_callbacks`` adds them."""
        from mlembed.callbacks.rank_sampler import RankSampler
        from mlembed.callbacks.svd_init import SVDInit

        return [SVDInit(), RankSampler()]

    def validate(self, hidden_size: int, vocab_size: int) -> None:
        """Check the rank against the backbone, naming the flag: the SVD has at most min(vocab, hidden) ranks."""
        check_rank(self.rank, hidden_size, vocab_size)


def check_rank(rank: int, hidden_size: int, vocab_size: int) -> None:
    """Refuse factors of a rank the SVD of a vocab x hidden matrix cannot give (at most min(vocab, hidden))."""
    if rank > hidden_size:
        raise ValueError(f"--model.mel.rank ({rank}) exceeds the backbone's hidden size {hidden_size}")
    if rank > vocab_size:
        raise ValueError(f"--model.mel.rank ({rank}) exceeds the backbone's vocabulary size {vocab_size}")


class FactorizedEmbedding(nn.Module):
    """Token embedding ``A[ids, :k] @ B[:k]`` computed gather-first.

    Gathering the rows of A for the batch's distinct tokens and multiplying those by B costs
    distinct tokens x k x hidden, instead of building the whole vocab x hidden matrix every step as the
    reference does.

    It is installed with ``set_input_embeddings`` so every Hugging Face architecture keeps its own forward
    (position embeddings, scaling, norms) around it. Until the factors are set (``SVDInit`` callback, or a
    checkpoint) it refuses to run, rather than silently embedding with uninitialised memory.
    """

    def __init__(self, vocab_size: int, hidden_size: int, rank: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.zeros(vocab_size, rank, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(rank, hidden_size, dtype=dtype))
        # A buffer, so a checkpoint records that the factors hold trained values.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.max_rank = rank
        self.active_rank = rank
        # The original matrix, kept only until SVD init; a plain attribute so it is never saved or trained.
        self.source_weight: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed ``input_ids`` [B, T] -> [B, T, hidden] at the active rank."""
        if not bool(self.initialized):
            raise RuntimeError(
                "MEL is on (--model.mel.enabled=True) but its factors are not initialised: initialise them "
                "with the SVD of the embedding matrix (the mlembed.callbacks.SVDInit callback, which the module adds "
                "by itself during fit) or load a trained checkpoint"
            )
        k = self.active_rank
        # Each distinct token once: real text repeats its tokens (Zipf), so a batch of 18k tokens holds a few
        # thousand distinct ids, and the product (and its backward) shrinks by that factor.
        ids, where = torch.unique(input_ids, return_inverse=True)
        table = F.embedding(ids, self.A)[:, :k] @ self.B[:k]  # [distinct, hidden]
        return F.embedding(where, table)  # [B, T, hidden]

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        """Set A and B from the truncated SVD of ``weight`` (vocab x hidden), so A @ B is its best rank-r fit.

        The SVD comes from the eigendecomposition of the small hidden x hidden Gram matrix in float64, which
        is exact to float32 precision and far cheaper than a full SVD of a 150k x 1k matrix.
        """
        w = weight.detach().to(torch.float64)
        eigvals, eigvecs = torch.linalg.eigh(w.T @ w)  # ascending
        v = eigvecs.flip(-1)[:, : self.max_rank]  # [hidden, r], right singular vectors, largest first
        self.A.copy_((w @ v).to(self.A.dtype))  # U_r S_r
        self.B.copy_(v.T.to(self.B.dtype))  # V_r^T
        self.initialized.fill_(True)
        self.source_weight = None

    def materialize(self, rank: int | None = None) -> torch.Tensor:
        """The dense vocab x hidden matrix at ``rank`` (compat export: any HF loader can read it)."""
        k = self.max_rank if rank is None else rank
        return self.A[:, :k] @ self.B[:k]

    def extra_repr(self) -> str:
        return f"vocab={self.A.shape[0]}, hidden={self.B.shape[1]}, rank={self.max_rank}, active={self.active_rank}"
