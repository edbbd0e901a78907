"""Worker of test_gather.py (torchrun, 2 gloo ranks): one DDP training step per gradient mode.

For each config it saves this rank's loss and the parameter gradients after DDP averaging (seen just before
the optimizer step) to ``<out>/rank<R>.pt``.
"""

from __future__ import annotations

import os
import sys

import torch
from lightning.pytorch import Callback

from mlembed.callbacks import RankSampler
from tests.distributed.common import MEL_RANK, build_module, full_batch, grads_of, one_ddp_step, rank_rows

#: name -> (gather_grad mode, hard negatives in the batch and the loss, gradient-cache chunk size)
CONFIGS = {
    "all": ("all", True, None),
    "all_cached": ("all", True, 2),
    "all_in_batch": ("all", False, None),
    "local_in_batch": ("local", False, None),
    "none_in_batch": ("none", False, None),
}


class PinnedRank(RankSampler):
    """Every step at MEL_RANK, as the single-process reference (it stands in for the sampler MEL adds)."""

    def rank_at(self, ranks, step):
        return MEL_RANK


class Record(Callback):
    """This rank's training loss and its gradients after the all-reduce."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = grads_of(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = float(trainer.callback_metrics["train/loss"])


def run(name: str, rank: int) -> dict:
    mode, hard, chunk = CONFIGS[name]
    module = build_module(mode, hard=hard, chunk=chunk)
    batch = rank_rows(full_batch(module, negatives=hard), rank)
    record = Record()
    one_ddp_step(module, batch, [record, PinnedRank()])
    return {"loss": record.loss, "grads": record.grads}


def main(out: str) -> None:
    rank = int(os.environ["RANK"])
    results = {name: run(name, rank) for name in CONFIGS}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    # Left to interpreter exit, the gloo group sometimes aborts a rank after a successful run.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
