"""Gradient caching: the in-batch negatives of a large batch on the memory of a small one.

A contrastive loss couples every row of a batch (each query is scored against every positive), so the batch
cannot be cut into independent micro-batches. Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup") splits one step into three passes instead:

1. embed the texts chunk by chunk WITHOUT an autograd graph, recording each chunk's RNG state;
2. compute the loss on the whole batch with those embeddings as leaves, and its gradient with respect to them
   (cheap: embeddings are a few KB per text);
3. embed each chunk again WITH a graph, under its recorded RNG state, and backpropagate the cached gradient
   through the surrogate ``sum over layers of (embedding * gradient).sum()``; only one chunk's activations are
   alive at a time, and the weight gradients add up to those of the whole batch.

Pass 3 must run the model that pass 1 ran: the same MEL rank (module state, set once per step by RankSampler),
the same active MLL layers (each layer's embeddings get their own cached gradient), and the same dropout masks
(the RNG replay). The loss itself is the caller's (EmbeddingModule.loss_on_embeddings), so MRL, MLL and the
cross-device gather are the same maths as the uncached step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

#: ``embed(inputs) -> {layer: [rows, H]}``: pooled embeddings of a slice of a batch's texts.
Embed = Callable[[dict[str, torch.Tensor]], dict[int, torch.Tensor]]
#: ``objective(*sides) -> (loss, logs)``: the loss of the whole batch from each side's ``{layer: [N, H]}``.
Objective = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class GradCache:
    """Settings of gradient caching (``--model.grad_cache.chunk_size``); null turns it off."""

    chunk_size: int = 32
    """Texts per forward pass. Queries and documents (positives + negatives) are chunked separately; memory
    grows with the chunk, not with the batch."""
    gradient_clip_val: float | None = None
    """Clip the gradient norm to this after the cached backward. Use it instead of Trainer(gradient_clip_val),
    which Lightning rejects under manual optimization."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"--model.grad_cache.chunk_size ({self.chunk_size}) must be >= 1")
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            raise ValueError(f"--model.grad_cache.gradient_clip_val ({self.gradient_clip_val}) must be > 0")


class RngState:
    """The CPU (and, on CUDA, the device's) generator state at one moment, so dropout can be replayed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the recorded state; the generators are left as they were before it."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@dataclass
class Chunk:
    """A slice of rows of one side of the batch, with what pass 3 needs to replay it."""

    side: int
    inputs: dict[str, torch.Tensor]
    rng: RngState
    grads: dict[int, torch.Tensor] | None = None


def chunk_rows(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Rows ``start:stop`` of tokenized ``inputs``, without the columns that are padding in every one of them.

    Trimming is exact: positions come from the attention mask (Backbone.forward), and padded keys are masked.
    It trims both ends, so left- and right-padded batches both work.
    """
    mask = inputs["attention_mask"][start:stop]  # [rows, T]
    used = mask.any(0).nonzero().flatten()
    first, last = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, mask.shape[1])
    return {key: value[start:stop, first:last] for key, value in inputs.items()}  # [rows, T']


class CachedStep:
    """One batch's loss and backward with gradient caching.

    Args:
        embed: pooled embeddings of a slice of texts, per layer (``EmbeddingModule.pooled`` at fixed layers).
        inputs: the tokenized sides of the batch, e.g. (queries, positives + negatives).
        objective: the loss of the whole batch from each side's embeddings (``EmbeddingModule.loss_on_embeddings``).
        chunk_size: texts per forward pass.

    Call :meth:`loss` (passes 1 and 2) then :meth:`backward` (pass 3), with the model's state unchanged between.
    """

    def __init__(self, embed: Embed, inputs: Sequence[dict[str, torch.Tensor]], objective: Objective,
                 chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size ({chunk_size}) must be >= 1")
        self.embed, self.inputs, self.objective, self.chunk_size = embed, tuple(inputs), objective, chunk_size
        self.chunks: list[Chunk] = []

    def loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Passes 1 and 2: the batch's loss (detached) and logs; the gradients per chunk are kept for backward."""
        sides = self._embed_without_graph()
        leaves = [{layer: x.requires_grad_() for layer, x in side.items()} for side in sides]
        with torch.enable_grad():
            loss, logs = self.objective(*leaves)
            flat = [x for side in leaves for x in side.values()]
            # materialize: an embedding the loss ignores (e.g. negatives with hard negatives off) gets zeros.
            grads = torch.autograd.grad(loss, flat, allow_unused=True, materialize_grads=True)
        self._split_grads(leaves, grads)
        return loss.detach(), logs

    def backward(self, backward: Callable[[torch.Tensor], None],
                 no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        """Pass 3: re-embed each chunk with a graph and backpropagate its cached gradient.

        Args:
            backward: runs backward on a scalar (``LightningModule.manual_backward``: precision scaling, DDP).
            no_sync: a context without gradient all-reduce (``strategy.block_backward_sync``); every chunk but
                the last runs in it, so DDP reduces the summed gradient once.
        """
        if not self.chunks or self.chunks[0].grads is None:
            raise RuntimeError("CachedStep.backward() needs CachedStep.loss() first")
        last = len(self.chunks) - 1
        for index, chunk in enumerate(self.chunks):
            sync = contextlib.nullcontext() if index == last else no_sync()
            with sync, chunk.rng.replay():
                out = self.embed(chunk.inputs)  # layer -> [rows, H], now with a graph
                surrogate = sum((out[layer] * grad).sum() for layer, grad in chunk.grads.items())
                backward(surrogate)

    def _embed_without_graph(self) -> list[dict[int, torch.Tensor]]:
        """Pass 1: each side's embeddings ``{layer: [N, H]}``, chunk by chunk, recording RNG states."""
        self.chunks = []
        sides = []
        for side, inputs in enumerate(self.inputs):
            rows, parts = inputs["input_ids"].shape[0], []
            for start in range(0, rows, self.chunk_size):
                piece = chunk_rows(inputs, start, min(start + self.chunk_size, rows))
                rng = RngState(piece["input_ids"].device)
                with torch.no_grad():
                    parts.append(self.embed(piece))
                self.chunks.append(Chunk(side, piece, rng))
            sides.append({layer: torch.cat([p[layer] for p in parts]) for layer in parts[0]})  # [N, H]
        return sides

    def _split_grads(self, leaves: list[dict[int, torch.Tensor]], grads: Sequence[torch.Tensor]) -> None:
        """Give each chunk its rows of the cached gradient ``{layer: [rows, H]}``."""
        flat = iter(grads)
        per_side = [{layer: next(flat) for layer in side} for side in leaves]
        offsets = [0] * len(leaves)
        for chunk in self.chunks:
            rows = chunk.inputs["input_ids"].shape[0]
            start = offsets[chunk.side]
            chunk.grads = {layer: g[start : start + rows] for layer, g in per_side[chunk.side].items()}
            offsets[chunk.side] += rows


# -- the Lightning side: how a LightningModule under manual optimization runs a cached step ------------------
def fsdp_root(module) -> torch.nn.Module | None:
    """The FSDP unit wrapping ``module`` during fit, or None (one device, DDP, or no trainer)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    trainer = getattr(module, "_trainer", None)
    model = trainer.model if trainer is not None else None
    return model if isinstance(model, FullyShardedDataParallel) else None


def chunk_embedder(module, layers: Sequence[int]) -> Embed:
    """How gradient caching embeds one chunk of ``module``'s batch: ``inputs -> {layer: [rows, H]}``.

    Under FSDP every chunk goes through the root unit's forward (the module's ``forward``): the backward of one
    chunk reshards the root-level parameters (embeddings, MEL factors, final norm), and only the root's forward
    gathers them again. Each chunk is then an ordinary FSDP forward/backward pair, as in accumulation.
    """
    runner = fsdp_root(module) or module
    return lambda inputs: runner(inputs, layers)


def apply_cached_update(module, cached: CachedStep, gradient_clip_val: float | None) -> None:
    """The cached backward, then what automatic optimization would do: clip, step, schedule.

    Args:
        module: the LightningModule (manual optimization) whose optimizer and scheduler step.
        cached: the step whose ``loss()`` was computed.
        gradient_clip_val: clip the gradient norm to this (None: no clipping).
    """
    optimizer = module.optimizers()
    optimizer.zero_grad()
    # FSDP reduce-scatters each chunk's gradient into the shards (its no_sync needs an idle root, and would
    # keep whole unsharded gradients); DDP all-reduces once, after the last chunk.
    strategy = module.trainer.strategy
    no_sync = contextlib.nullcontext if fsdp_root(module) is not None else getattr(
        strategy, "block_backward_sync", contextlib.nullcontext)
    cached.backward(module.manual_backward, no_sync)
    module.configure_gradient_clipping(optimizer, gradient_clip_val, "norm")
    optimizer.step()
    scheduler = module.lr_schedulers()
    if scheduler is not None:
        scheduler.step()
