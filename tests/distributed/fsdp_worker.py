"""Worker of test_fsdp.py (torchrun, 2 gloo ranks): FSDP fit of the tiny model with MEL + MLL + MRL.

The strategy is configs/trainer/fsdp.yaml's (policies, sharded checkpoints) with the class swapped for the
CPU-capable test subclass. After 3 training steps one validation pass records the full-rank, full-depth
embeddings of the queries (through the FSDP root forward, where parameters are whole) and saves a sharded
checkpoint. Rank 0 writes ``<out>/probe.pt``; the checkpoint is the directory ``<out>/sharded.ckpt``.
"""

from __future__ import annotations

import os
import sys

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import Strategy
from torch.utils.data import DataLoader

from mlembed.axes import MEL, MLL, MRL
from mlembed.callbacks import RankSampler
from mlembed.module import EmbeddingModule
from mlembed.optim import OptimizerConfig
from tests.distributed.common import ROOT, WORLD, full_batch, rank_rows
from tests.helpers import tiny_backbone

STEPS = 3


class Probe(EmbeddingModule):
    """EmbeddingModule whose validation step keeps the queries' embeddings at full rank and depth."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        depth = self.encoder.backbone.depth
        with self.encoder.at_rank(None):
            self.probe = self.encoder(batch["query"], [depth])[depth].detach().clone()


class Save(Callback):
    """Records the MEL rank of every step; after validation saves the sharded checkpoint and the probe."""

    def __init__(self, out: str) -> None:
        self.out, self.ranks = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        assert pl_module.encoder.factorized_embedding is not None  # FSDP left the MEL module in place (root unit)
        self.ranks.append(pl_module.encoder.mel_rank)

    def on_validation_end(self, trainer, pl_module):
        trainer.save_checkpoint(os.path.join(self.out, "sharded.ckpt"))
        if trainer.global_rank == 0:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
            from torch.distributed.fsdp import FullyShardedDataParallel

            modules = list(trainer.strategy.model.modules())
            torch.save({
                "embeddings": pl_module.probe,
                "ranks": self.ranks,
                "fsdp_units": sum(isinstance(m, FullyShardedDataParallel) for m in modules),
                "checkpointed": sum(isinstance(m, CheckpointWrapper) for m in modules),
            }, os.path.join(self.out, "probe.pt"))


def strategy_from_yaml() -> Strategy:
    """configs/trainer/fsdp.yaml's strategy, parsed as the CLI parses it, on the CPU test subclass."""
    config = yaml.safe_load((ROOT / "configs" / "trainer" / "fsdp.yaml").read_text())["trainer"]["strategy"]
    assert config["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    config["class_path"] = "mlembed.strategies.CPUFSDPStrategy"
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    return parser.instantiate(parser.parse_object({"strategy": config})).strategy


def probe_run(rank: int) -> tuple[Probe, DataLoader, DataLoader]:
    """The SVD-initialised tiny module with all axes, this rank's training rows and the shared validation batch."""
    module = Probe(tiny_backbone("bert", layers=3), mel=MEL(rank=32, ranks=[8, 16, 32]), mll=MLL(), mrl=MRL(),
                   optimizer=OptimizerConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0))
    module.configure_model()
    module.init_mel_from_svd()
    batch = full_batch(module)
    train = DataLoader([rank_rows(batch, rank)] * STEPS, batch_size=None)
    val = DataLoader([batch], batch_size=None)  # every rank embeds the same rows
    return module, train, val


def main(out: str) -> None:
    module, train, val = probe_run(int(os.environ["RANK"]))
    trainer = Trainer(accelerator="cpu", devices=WORLD, strategy=strategy_from_yaml(), max_epochs=1,
                      precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                      callbacks=[RankSampler(seed=3), Save(out)], default_root_dir=out)
    trainer.fit(module, train, val)
    # Left to interpreter exit, the gloo group sometimes aborts rank 1 after a successful fit.
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
