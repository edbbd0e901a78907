"""FSDP for Hugging Face backbones: the per-layer policy that YAML can name, and a CPU strategy for tests.

Where the MEL factors live: the FactorizedEmbedding is not a transformer layer, so its A and B join the other
root-level parameters (position embeddings, final norm) in the ROOT FSDP unit, sharded like everything else
(FULL_SHARD). See docs/scale-out.md for why they are neither replicated nor wrapped as their own unit.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy


class TransformerLayerPolicy(ModuleWrapPolicy):
    """One FSDP unit (or one activation-checkpointing region) per transformer layer, for any HF architecture.

    Every transformers 5.x layer class (Qwen3DecoderLayer, BertLayer, XLMRobertaLayer, ...) subclasses
    ``transformers.modeling_layers.GradientCheckpointingLayer``, and the policy matches subclasses. It is a class
    with no arguments so that YAML names it by ``class_path`` (a set of classes cannot be written in YAML):
    ``auto_wrap_policy: {class_path: mlembed.strategies.TransformerLayerPolicy}``.
    """

    def __init__(self) -> None:
        from transformers.modeling_layers import GradientCheckpointingLayer

        super().__init__({GradientCheckpointingLayer})


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU processes (gloo), for tests of sharding and sharded checkpoints.

    Lightning refuses the exact FSDPStrategy class without a GPU, and FSDP picks the current CUDA device as its
    compute device unless it is given ``device_id=cpu``. Use ``state_dict_type="sharded"`` ("full" crashed on
    CPU with a segfault under torch 2.13). Not for training runs: CPU FSDP is only a correctness harness.
    """

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        # The parent then only adds activation checkpointing; without the policy it does not warn about it.
        policy: Any = self.kwargs.pop("auto_wrap_policy", None)
        try:
            return super()._setup_model(wrapped)
        finally:
            if policy is not None:
                self.kwargs["auto_wrap_policy"] = policy
