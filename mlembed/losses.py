"""The base loss that the Matryoshka axes wrap: InfoNCE with in-batch and hard negatives, plus distillation.

Inputs are L2-normalised embeddings (one MRL prefix at a time), so dot products are cosine similarities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

GatherMode = Literal["none", "local", "all"]
#: ``gather(x, mode) -> [world * B, ...]``: this process's rows sit at ``process_index * B``; ``mode`` picks the gradient.
Gather = Callable[[torch.Tensor, str], torch.Tensor]


def gather_single_process(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The gather of a single process: itself (no gradient at all when ``mode`` is ``none``)."""
    return x.detach() if mode == "none" else x


def gather_rows(x: torch.Tensor, mode: str, *, world_size: int, rank: int,
                all_gather: Callable[..., torch.Tensor]) -> torch.Tensor:
    """All processes' rows of ``x`` [B, ...] -> [W*B, ...], with the gradient ``mode`` asks for.

    Args:
        x: this process's rows.
        mode: ``all`` (the gradient flows back to every process's rows, each process's share summed by the
            strategy's gradient reduction), ``local`` (only to this process's own rows) or ``none``.
        world_size: the number of processes.
        rank: this process's index among them.
        all_gather: the strategy's gather, called as ``all_gather(x, sync_grads=...)`` -> [W, B, ...]
            (Lightning's ``LightningModule.all_gather``).
    """
    if world_size == 1:
        return gather_single_process(x, mode)
    gathered = all_gather(x, sync_grads=True) if mode == "all" else all_gather(x.detach())
    gathered = gathered.reshape(-1, *x.shape[1:])  # [W, B, ...] -> [W*B, ...]
    if mode == "local":
        parts = list(gathered.split(x.shape[0]))
        parts[rank] = x
        gathered = torch.cat(parts)
    return gathered


@dataclass
class ContrastiveLoss:
    """InfoNCE over in-batch and hard negatives, temperature-scaled cosine similarity."""

    temperature: float = 0.05
    """Softmax temperature of the similarity logits."""
    in_batch: bool = True
    """Use the positives of the whole (global) batch as negatives, for retrieval-type tasks."""
    hard_negatives: bool = True
    """Score each query against its own positive and hard negatives."""
    gather_grad: GatherMode = "all"
    """Gradient through positives gathered from other devices: ``none`` (the reference: no gradient, not even
    for the local ones), ``local`` (this device's rows only) or ``all`` (exact gradient of the global loss)."""
    mask_false_negatives: bool = True
    """Leave out of row i's in-batch denominator every other row with the same query or positive text."""
    kd_weight: float = 0.0
    """Weight of the vector distillation term (MSE between the student's unit vectors and the teacher's); 0 turns
    it off. With ``kd_teacher=model`` it applies only at the MRL width equal to the teacher's (a teacher that was
    not trained for prefixes has no meaningful prefix); otherwise at every width, against the teacher's prefix."""
    kd_similarity_weight: float = 0.0
    """Weight of the relational distillation term: at every (layer, dim, rank) point, the MSE between the cosine
    similarities of the batch's texts (queries and positives, all pairs) and the teacher's full-size ones. It
    holds every reduced point to the teacher's geometry whatever its width; 0 turns it off."""
    kd_feature_weight: float = 0.0
    """Weight of the authors' distillation term: at every MLL layer, the MSE between the student's raw (not
    normalised) pooled features and the frozen teacher's features of its matching layer (the i-th MLL layer of each;
    the teacher's cut to the student's width), for queries, positives and hard negatives, added once per layer
    and averaged over layers like the contrastive terms. Needs ``kd_teacher=model``; 0 turns it off."""
    kd_teacher: Literal["self", "batch", "model"] = "self"
    """Teacher of the distillation terms: ``self`` (this step's last layer at full width and rank, detached),
    ``batch`` (vectors stored with the data, ``batch["teacher_query"]``) or ``model`` (a separate frozen model:
    ``--model.teacher``, by default the starting model itself)."""
    kd_bitext_target: Literal["positive", "query", "none"] = "positive"
    """The teacher's vectors that a ``bitext`` batch's positives (the translations) are held to: ``positive`` (the
    teacher's vectors of the translations themselves), ``query`` (of their source sentences) or ``none`` (not held:
    only the sources are distilled, and the translations are left to the contrastive term). A teacher that knows
    only the source language places a translation wherever its tokens fall, and holding the student there fights
    the contrastive term, which pulls the translation onto its source; ``query`` makes both terms agree (multilingual
    knowledge distillation: the translation's target is the source's teacher vector), ``none`` distills only the
    text that such a teacher can read."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"--model.loss.temperature ({self.temperature}) must be > 0")
        for flag in ("kd_weight", "kd_similarity_weight", "kd_feature_weight"):
            if getattr(self, flag) < 0:
                raise ValueError(f"--model.loss.{flag} ({getattr(self, flag)}) must be >= 0")
        if self.gather_grad not in ("none", "local", "all"):
            raise ValueError(f"--model.loss.gather_grad ({self.gather_grad!r}) must be none, local or all")
        if self.kd_teacher not in ("self", "batch", "model"):
            raise ValueError(f"--model.loss.kd_teacher ({self.kd_teacher!r}) must be self, batch or model")
        if self.kd_bitext_target not in ("positive", "query", "none"):
            raise ValueError(f"--model.loss.kd_bitext_target ({self.kd_bitext_target!r}) must be positive, query or none")
        if self.kd_feature_weight > 0 and self.kd_teacher != "model":
            raise ValueError(f"--model.loss.kd_feature_weight ({self.kd_feature_weight}) distils a frozen model's "
                             "per-layer features: set --model.loss.kd_teacher=model")
        if not (self.in_batch or self.hard_negatives or self.distills):
            raise ValueError("--model.loss.in_batch and --model.loss.hard_negatives are both off and nothing is "
                             "distilled (--model.loss.kd_weight / kd_similarity_weight): no loss left")

    @property
    def distills(self) -> bool:
        """Whether any distillation term is on."""
        return self.distills_vectors or self.kd_feature_weight > 0

    @property
    def distills_vectors(self) -> bool:
        """Whether a term on the teacher's final unit vectors is on (``kd_weight``, ``kd_similarity_weight``)."""
        return self.kd_weight > 0 or self.kd_similarity_weight > 0

    def __call__(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor | None,
        *,
        query_hash: torch.Tensor,
        positive_hash: torch.Tensor,
        use_in_batch: bool,
        gather: Gather = gather_single_process,
        process_index: int = 0,
        teacher: tuple[torch.Tensor, ...] | None = None,
        dim: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms for one (layer, dim) point.

        Args:
            query: [B, D] normalised; positive: [B, D]; negatives: [B, N, D] or None.
            query_hash, positive_hash: [B] text hashes (false-negative masking across devices).
            use_in_batch: the batch's task type allows in-batch negatives.
            gather: collects a tensor from all devices (see :data:`Gather`).
            process_index: this device's index in the gathered rows.
            teacher: normalised teacher vectors for (query[, positive]) at this width, for distillation.
            dim: the width, unused here but passed by MRL for losses that want it.
        """
        terms: dict[str, torch.Tensor] = {}
        if self.in_batch and use_in_batch:
            terms["in_batch"] = self.in_batch_loss(query, positive, query_hash, positive_hash, gather, process_index)
        if self.hard_negatives and negatives is not None and negatives.shape[1] > 0:
            terms["hard"] = self.hard_negative_loss(query, positive, negatives)
        if not terms and (self.in_batch or self.hard_negatives):
            # A batch with neither term (no in-batch task, no negatives) still teaches the positive pair.
            terms["hard"] = self.hard_negative_loss(query, positive, positive.new_zeros(positive.shape[0], 0, positive.shape[1]))
        if teacher is not None:
            terms.update(self.distillation_terms((query, positive), teacher))
        return terms

    def distillation_terms(self, student: tuple[torch.Tensor, ...],
                           teacher: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The weighted distillation terms of one point (see ``kd_weight`` and ``kd_similarity_weight``)."""
        terms = {}
        full_width = student[0].shape[-1] == teacher[0].shape[-1]
        if self.kd_weight > 0 and (full_width or self.kd_teacher != "model"):
            terms["kd"] = self.kd_weight * distillation_loss(student, teacher)
        if self.kd_similarity_weight > 0:
            terms["kd_sim"] = self.kd_similarity_weight * similarity_distillation_loss(student, teacher)
        return terms

    def in_batch_loss(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        query_hash: torch.Tensor,
        positive_hash: torch.Tensor,
        gather: Gather,
        process_index: int,
    ) -> torch.Tensor:
        """Queries [B, D] against the positives of all devices [W*B, D]; row i's label is ``process_index * B + i``."""
        batch = query.shape[0]
        all_pos = gather(positive, self.gather_grad)  # [W*B, D]
        logits = query @ all_pos.T / self.temperature  # [B, W*B]
        labels = process_index * batch + torch.arange(batch, device=query.device)
        if self.mask_false_negatives:
            all_qh = gather(query_hash, "none")  # [W*B]
            all_ph = gather(positive_hash, "none")
            same = (query_hash[:, None] == all_qh[None, :]) | (positive_hash[:, None] == all_ph[None, :])
            same[torch.arange(batch, device=query.device), labels] = False
            logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, labels)

    def hard_negative_loss(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Each query against [its positive, its own negatives]: label 0 (negatives are not shared)."""
        candidates = torch.cat([positive.unsqueeze(1), negatives], dim=1)  # [B, 1+N, D]
        logits = torch.einsum("bd,bnd->bn", query, candidates) / self.temperature  # [B, 1+N]
        labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
        return F.cross_entropy(logits, labels)


def similarity_distillation_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """MSE between the cosine-similarity matrices of the student's and the teacher's vectors of the same texts.

    Args:
        student: unit vectors [B, D] per group of texts (queries, positives), at any width D.
        teacher: the teacher's vectors [B, D_t] of the same texts, in the same order (normalised here).
    """
    groups = min(len(student), len(teacher))  # a batch-stored teacher may hold the queries only
    s = torch.cat(student[:groups])  # [G*B, D]
    t = F.normalize(torch.cat(teacher[:groups]).detach().to(s.dtype), dim=-1)  # [G*B, D_t]
    return F.mse_loss(s @ s.T, t @ t.T)  # over all [G*B, G*B] pairs


def distillation_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """MSE between student vectors and the same-width prefix of the teacher's, summed over the pairs given."""
    losses = []
    for s, t in zip(student, teacher):
        width = min(s.shape[-1], t.shape[-1])
        t_prefix = F.normalize(t[..., :width].detach().to(s.dtype), dim=-1)
        losses.append(F.mse_loss(s[..., :width], t_prefix))
    return torch.stack(losses).sum()


def feature_distillation_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The authors' distillation at one layer: the MSE between raw features, summed over the groups given.

    Args:
        student: raw pooled features per group of texts (queries [B, D], positives [B, D], negatives [B, N, D]).
        teacher: the teacher's features of the same texts (any width >= D; its first D features are used).
    """
    return torch.stack([F.mse_loss(s, t[..., : s.shape[-1]].detach().to(s.dtype)) for s, t in zip(student, teacher)]).sum()
