"""Worker of test_gradcache_fsdp.py (torchrun, 2 gloo ranks): the same FSDP fit with and without gradient caching.

The strategy is configs/trainer/fsdp.yaml's (a unit and an activation-checkpointing region per layer), all three
axes are on, RankSampler changes the MEL rank every step, and a frozen teacher (the starting model) is distilled. Rank 0 saves to ``<out>/runs.pt``, per run, the loss
and MEL rank of every step and the whole (unsharded, reduced across ranks) gradients seen before each optimizer
step.
"""

from __future__ import annotations

import os
import sys

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from mlembed.axes import MEL, MLL, MRL
from mlembed.callbacks import RankSampler
from mlembed.gradcache import GradCache
from mlembed.losses import ContrastiveLoss
from mlembed.module import EmbeddingModule
from mlembed.optim import OptimizerConfig
from tests.distributed.common import WORLD, full_batch, rank_rows
from tests.distributed.fsdp_worker import strategy_from_yaml
from tests.helpers import tiny_backbone

STEPS = 3
CHUNK = 2  # 3 queries and 6 documents per rank: 2 and 3 chunks


class Record(Callback):
    """Each step's loss and MEL rank, and its whole gradients (gathered from the shards) before the update."""

    def __init__(self) -> None:
        self.losses, self.ranks, self.grads, self.kd = [], [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(trainer.model, with_grads=True):
            self.grads.append({clean(name): p.grad.detach().clone() for name, p in pl_module.named_parameters()
                               if p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))
        self.kd.append(float(trainer.callback_metrics["train/loss/kd_sim"]))
        self.ranks.append(pl_module.encoder.mel_rank)


def clean(name: str) -> str:
    """A parameter name without the FSDP and activation-checkpointing wrappers' prefixes."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def build(chunk: int | None) -> EmbeddingModule:
    torch.manual_seed(0)  # the same random tiny BERT in both runs and on both ranks
    module = EmbeddingModule(tiny_backbone("bert", layers=3), mel=MEL(rank=32, ranks=[8, 16, 32]), mll=MLL(),
                             mrl=MRL(), optimizer=OptimizerConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0),
                             grad_cache=GradCache(chunk_size=chunk) if chunk else None,
                             # the frozen starting model as a teacher: FSDP leaves it out of its units
                             loss=ContrastiveLoss(kd_teacher="model", kd_similarity_weight=10.0, kd_weight=1.0))
    module.configure_model()
    module.init_mel_from_svd()
    return module


def run(chunk: int | None, rank: int) -> dict:
    module = build(chunk)
    record = Record()
    trainer = Trainer(accelerator="cpu", devices=WORLD, strategy=strategy_from_yaml(), max_steps=STEPS,
                      precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False,
                      callbacks=[RankSampler(seed=3), record])
    trainer.fit(module, DataLoader([rank_rows(full_batch(module), rank)] * STEPS, batch_size=None))
    return {"losses": record.losses, "ranks": record.ranks, "grads": record.grads, "kd": record.kd,
            "parameters": [name for name, _ in module.named_parameters()]}


def main(out: str) -> None:
    rank = int(os.environ["RANK"])
    plain, cached = run(None, rank), run(CHUNK, rank)
    if rank == 0:
        torch.save({"plain": plain, "cached": cached}, os.path.join(out, "runs.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
