"""The per-step random draws of the axis callbacks (MEL rank, MLL layer subset)."""

from __future__ import annotations

import torch


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends on (seed, optimizer step) only.

    So every device draws the same value at a step, a resumed run continues the same sequence, and the
    micro-batches of one accumulated step share their draw.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + step)
