"""What the distributed tests and the worker scripts they launch share: the tiny module, the batch, the launcher.

Both sides build the same module from the same seed, so a worker's gradients can be compared with a
single-process reference computed in the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from mlembed.gradcache import GradCache
from mlembed.losses import ContrastiveLoss
from mlembed.module import EmbeddingModule
from tests.helpers import make_batch, tiny_module

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
PER_RANK = 3  # rows per rank: the helpers' 6 sentences split over 2 ranks
MEL_RANK = 16  # fixed, so every rank and the reference embed at the same rank


def build_module(mode: str = "all", *, hard: bool = True, chunk: int | None = None) -> EmbeddingModule:
    """Tiny BERT (no dropout) with MEL (rank 32, active 16), MLL {1, 2, 3} and MRL {8, ..., 64} on."""
    module = tiny_module("bert", rank=32, layers=3, loss=ContrastiveLoss(gather_grad=mode, hard_negatives=hard))
    module.encoder.mel_rank = MEL_RANK
    if chunk is not None:
        module.grad_cache = GradCache(chunk_size=chunk)
        module.automatic_optimization = False
    return module


def full_batch(module: EmbeddingModule, negatives: bool = True) -> dict:
    """The whole batch of WORLD * PER_RANK rows, tokenized together (so every slice has the same width)."""
    from tests.helpers import NEGATIVES

    return make_batch(module, negatives=NEGATIVES if negatives else None)


def rank_rows(batch: dict, rank: int) -> dict:
    """Rank ``rank``'s rows of ``batch`` (one hard negative per query keeps negatives aligned with queries)."""
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    out = dict(batch)
    for key in ("query", "positive", "negatives"):
        if key in batch:
            out[key] = {k: v[rows] for k, v in batch[key].items()}
    for key in ("query_hash", "positive_hash"):
        out[key] = batch[key][rows]
    out["ids"] = batch["ids"][rows]
    return out


def grads_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every parameter gradient that exists."""
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def environment(**extra: str) -> dict[str, str]:
    """The environment of a test's subprocess: this checkout importable, one thread per process, and ``extra``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            **extra}


def launch(script: str, out: Path, timeout: int = 150) -> None:
    """Run ``tests/distributed/<script> <out>`` on WORLD gloo processes with torchrun; fail with its output."""
    env = environment()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               str(ROOT / "tests" / "distributed" / script), str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


def one_ddp_step(module: EmbeddingModule, batch: dict, callbacks: list) -> None:
    """One training step of ``module`` on this rank's ``batch`` under DDP on WORLD gloo processes (in a worker)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader

    # find_unused_parameters: BERT's pooler gets no gradient from pooled embeddings.
    strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="gloo")
    trainer = Trainer(accelerator="cpu", devices=WORLD, strategy=strategy, max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      use_distributed_sampler=False, callbacks=callbacks)
    trainer.fit(module, DataLoader([batch], batch_size=None))
