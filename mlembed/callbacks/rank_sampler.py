"""RankSampler: sets MEL's active rank each training step, drawn proportionally to rank."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mlembed.axes.mel import sample_rank


class RankSampler(Callback):
    """Draws one rank per optimizer step from the module's MEL rank set, with probability proportional to rank.

    The draw is a function of (seed, global step) only, so every device draws the same rank, a resumed run
    continues the same sequence, and gradient-accumulation micro-batches share their step's rank. Without this
    callback MEL trains at its full rank (the reference's shipped fixed factorisation).

    Args:
        seed: seed of the rank sequence.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def rank_at(self, ranks: tuple[int, ...], step: int) -> int:
        """The rank of optimizer step ``step``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return sample_rank(ranks, generator)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if pl_module.factorized_embedding is None or not pl_module.ranks:
            return
        pl_module.mel_rank = self.rank_at(pl_module.ranks, trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Leave the model at full rank for whatever runs after fit (evaluation, export).
        if pl_module.factorized_embedding is not None:
            pl_module.mel_rank = None
