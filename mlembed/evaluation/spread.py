"""Evaluation with every process of a run taking part (DDP, FSDP, or ``torchrun mlembed evaluate``).

The texts of each call are split across the processes (text i goes to process i mod W), each process embeds
its share, and the vectors are gathered back into the original order, so every process holds the same
vectors as one process would have computed, and computes the same scores. Every process makes the same calls
in the same order (the grid's control flow does not depend on the process), and each share is padded to the
same length, so the forward passes line up: under FSDP each chunk is a collective forward through the sharded
root, which gathers the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mlembed.artifact import PointGrid
from mlembed.encoder import Encoder

#: ``all_gather(x [N, ...]) -> [W, N, ...]``: every process's ``x``, stacked in process order.
AllGather = Callable[[torch.Tensor], torch.Tensor]
PADDING = "."
"""The text a process embeds to fill its share up to the others' length (its vectors are dropped)."""


class SpreadEncoder:
    """A ``PointEncoder`` whose ``embed`` runs on every process of a group, the texts split among them.

    Args:
        encoder: this process's model: an Encoder (whole, or the inner module of an FSDP run) or what
            ``mlembed.load`` returns.
        world_size: number of processes.
        process_index: this process's index in ``[0, world_size)``.
        all_gather: the group's gather (Lightning's ``strategy.all_gather`` or ``torch.distributed``'s).
        device: where the gathered tensors must be (the device of the group's backend).
        forward: what runs each chunk of an Encoder (the FSDP root under FSDP; default the encoder itself).
        parameters: ``{(rank, depth): count}`` counted before the weights were sharded (under FSDP a process
            holds flat shards, so ``encoder.num_parameters`` cannot count them); default: ask the encoder.
    """

    def __init__(self, encoder, *, world_size: int, process_index: int, all_gather: AllGather,
                 device: torch.device | str = "cpu", forward: Callable | None = None,
                 parameters: dict[tuple[int | None, int | None], int] | None = None) -> None:
        self.encoder, self.world_size, self.process_index = encoder, world_size, process_index
        self.all_gather, self.device, self.forward, self.parameters = all_gather, device, forward, parameters

    def points(self) -> PointGrid:
        return self.encoder.points()

    def num_parameters(self, *, rank: int | None = None, depth: int | None = None) -> int:
        if self.parameters is None:
            return self.encoder.num_parameters(rank=rank, depth=depth)
        return self.parameters[(rank, depth)]

    def embed(self, texts: Sequence[str], *, rank: int | None = None, depth: int | None = None,
              instruction: str | None = None, batch_size: int = 64) -> torch.Tensor:
        def local(mine):
            return {0: self.encoder.embed(mine, rank=rank, depth=depth, instruction=instruction,
                                          batch_size=batch_size)}
        return self._spread(texts, local)[0]

    def embed_layers(self, texts: Sequence[str], *, rank: int | None = None, depths: Sequence[int],
                     instruction: str | None = None, batch_size: int = 64) -> dict[int, torch.Tensor]:
        extra = {} if self.forward is None else {"forward": self.forward}
        return self._spread(texts, lambda mine: self.encoder.embed_layers(
            mine, rank=rank, depths=depths, instruction=instruction, batch_size=batch_size, **extra))

    def _spread(self, texts: Sequence[str], local: Callable[[list[str]], dict]) -> dict[int, torch.Tensor]:
        """``local`` on this process's share of ``texts``; every process's results gathered into text order."""
        share = -(-len(texts) // self.world_size)  # ceil: every process embeds this many texts
        mine = list(texts[self.process_index :: self.world_size])
        mine += [PADDING] * (share - len(mine))
        out = {}
        for key, vectors in local(mine).items():  # [share, H]
            gathered = self.all_gather(vectors.to(self.device)).cpu()  # [W, share, H]: process w has w, w+W, ...
            out[key] = gathered.transpose(0, 1).reshape(-1, vectors.shape[-1])[: len(texts)]  # [W*share, H]
        return out


def count_parameters(encoder: Encoder, points: PointGrid) -> dict[tuple[int | None, int | None], int]:
    """``encoder.num_parameters`` of every (rank, depth) of ``points`` and of the full model (None, None)."""
    ranks = set(points.ranks) | {None} if encoder.factorized_embedding is not None else {None}
    depths = set(points.depths) | {None}
    return {(rank, depth): encoder.num_parameters(rank=rank, depth=depth) for rank in ranks for depth in depths}


def torch_distributed_group(device: str) -> tuple[int, int, AllGather, str] | None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), or None for a single process.

    Returns:
        (world size, process index, all_gather, this process's device): gloo on CPU, NCCL on CUDA (each process
        on the GPU of its ``LOCAL_RANK``).
    """
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    world = dist.get_world_size()

    def all_gather(x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)  # [W, ...]

    return world, dist.get_rank(), all_gather, device
