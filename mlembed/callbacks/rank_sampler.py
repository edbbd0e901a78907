"""RankSampler: sets MEL's active rank each training step, drawn proportionally to rank."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mlembed.callbacks.seeding import step_generator


class RankSampler(Callback):
    """Draws one rank per optimizer step from the module's MEL rank set, with probability proportional to rank.

    The draw is a function of (seed, global step) only, so every device draws the same rank, a resumed run
    continues the same sequence, and gradient-accumulation micro-batches share their step's rank. The module adds one
    (seed 0) by itself when MEL is on and the trainer has none; list it to choose the seed.

    Args:
        seed: seed of the rank sequence.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def rank_at(self, ranks: tuple[int, ...], step: int) -> int:
        """The rank of optimizer step ``step``."""
        return sample_rank(ranks, step_generator(self.seed, step))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if pl_module.encoder.factorized_embedding is None or not pl_module.ranks:
            return
        pl_module.encoder.mel_rank = self.rank_at(pl_module.ranks, trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Leave the model at full rank for whatever runs after fit (evaluation, export).
        if pl_module.encoder.factorized_embedding is not None:
            pl_module.encoder.mel_rank = None


def sample_rank(ranks: tuple[int, ...], generator: torch.Generator) -> int:
    """Draw one rank with probability proportional to its value (large ranks more often, as in the paper)."""
    weights = torch.tensor(ranks, dtype=torch.float64)
    index = torch.multinomial(weights / weights.sum(), 1, generator=generator).item()
    return int(ranks[index])
