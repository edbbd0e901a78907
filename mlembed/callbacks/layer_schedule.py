"""LayerSchedule: which MLL layers get a loss at each training step."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mlembed.callbacks.seeding import step_generator


class LayerSchedule(Callback):
    """Sets ``pl_module.active_layers`` every step; validation always uses every MLL layer.

    Args:
        mode: ``all`` (every MLL layer from the start), ``deepest_first`` (start with the last layer and add
            shallower ones one by one, evenly spread over ``ramp_steps``), or ``sample`` (the last layer plus
            ``num_sampled`` other layers drawn per step, seeded: cheaper steps, the same layers in expectation).
        ramp_steps: length of the ``deepest_first`` ramp in optimizer steps.
        num_sampled: layers drawn besides the last one in ``sample`` mode.
        seed: seed of the ``sample`` draws (a function of (seed, step): reproducible and resumable).
    """

    def __init__(
        self,
        mode: Literal["all", "deepest_first", "sample"] = "all",
        ramp_steps: int = 100,
        num_sampled: int = 1,
        seed: int = 0,
    ) -> None:
        if mode not in ("all", "deepest_first", "sample"):
            raise ValueError(f"LayerSchedule mode {mode!r} must be all, deepest_first or sample")
        if ramp_steps < 1:
            raise ValueError(f"LayerSchedule ramp_steps ({ramp_steps}) must be >= 1")
        if num_sampled < 0:
            raise ValueError(f"LayerSchedule num_sampled ({num_sampled}) must be >= 0")
        self.mode, self.ramp_steps, self.num_sampled, self.seed = mode, ramp_steps, num_sampled, seed

    def layers_at(self, layers: tuple[int, ...], step: int) -> tuple[int, ...]:
        """The active subset of ``layers`` (sorted ascending) at optimizer step ``step``."""
        if self.mode == "all" or len(layers) == 1:
            return layers
        last, others = layers[-1], layers[:-1]
        if self.mode == "deepest_first":
            shown = min(len(others), (step * len(others)) // self.ramp_steps)
            return tuple(others[len(others) - shown :]) + (last,)
        generator = step_generator(self.seed, step)
        picked = torch.randperm(len(others), generator=generator)[: self.num_sampled].tolist()
        return tuple(sorted(others[i] for i in picked)) + (last,)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        pl_module.active_layers = self.layers_at(pl_module.layers, trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.active_layers = pl_module.layers
