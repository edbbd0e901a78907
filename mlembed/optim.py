"""Optimiser and learning-rate schedule settings (AdamW, cosine with warmup and an lr floor)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OptimizerConfig:
    """AdamW with a cosine schedule, warmup and a floor, as in the reference."""

    lr: float = 1e-5
    """Peak learning rate."""
    min_lr: float = 1e-7
    """Floor of the cosine decay."""
    warmup_steps: int = 100
    """Linear warmup, in optimizer steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"--model.optimizer.lr ({self.lr}) must be > 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"--model.optimizer.min_lr ({self.min_lr}) must lie in [0, lr={self.lr}]")
        if self.warmup_steps < 0:
            raise ValueError(f"--model.optimizer.warmup_steps ({self.warmup_steps}) must be >= 0")

    def build(self, parameters, total_steps: int) -> dict:
        """The Lightning ``configure_optimizers`` dict for ``parameters`` over ``total_steps`` optimizer steps."""
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        params = [p for p in parameters if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.lr, betas=tuple(self.betas), eps=self.eps, weight_decay=self.weight_decay
        )
        schedule = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer,
            num_warmup_steps=self.warmup_steps,
            num_training_steps=max(total_steps, self.warmup_steps + 1),
            min_lr=self.min_lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
