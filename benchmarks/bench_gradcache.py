"""What gradient caching buys and costs: peak step memory and step time, cached vs uncached, at two batch sizes.

The same backbone (all-MiniLM-L6-v2, real weights), all three axes on (MEL at rank 384, MLL {1, 2, 4, 6}, MRL),
in-batch InfoNCE over real sentence pairs, AdamW. The cached step embeds ``--chunk`` texts at a time (mlembed's
CachedStep, as ``--model.grad_cache.chunk_size`` runs it). Memory: each variant in its own subprocess, the peak
RSS growth over one warm step (the kernel's peak counter reset just before it), i.e. activations and temporaries
beyond the weights, gradients and AdamW states at rest. Time: the median of ``--repeats`` interleaved rounds.
The claim to check: cached memory follows the chunk, not the batch, for about one extra forward of time, and the
loss is the uncached one.

    python benchmarks/bench_gradcache.py [--batch 64] [--chunk 8] [--max-len 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch
from common import in_subprocesses, interleaved_medians, kib, make_batch, minilm_dir, sentence_pairs

from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig
from mlembed.module import EmbeddingModule
from mlembed.pooling import MeanPooling


def variants(args: argparse.Namespace) -> dict[str, tuple[int, int | None]]:
    """name -> (pairs per step, chunk size or None for the uncached step)."""
    small, large = args.batch, 2 * args.batch
    return {f"uncached {small}": (small, None), f"cached {small}": (small, args.chunk),
            f"uncached {large}": (large, None), f"cached {large}": (large, args.chunk)}


def build(max_len: int) -> tuple[EmbeddingModule, torch.optim.Optimizer]:
    torch.manual_seed(0)
    module = EmbeddingModule(BackboneConfig(pretrained=minilm_dir(), max_seq_length=max_len), pooling=MeanPooling(),
                             mel=MEL(rank=384, ranks=[64, 128, 256, 384]), mll=MLL(layers=[1, 2, 4, 6]), mrl=MRL())
    module.configure_model()
    module.init_mel_from_svd()
    # no dropout: the cached and uncached losses must agree exactly (the cached step replays dropout anyway)
    module.eval()
    return module, torch.optim.AdamW(module.parameters(), lr=1e-5)


def step(module: EmbeddingModule, optimizer: torch.optim.Optimizer, batch: dict, chunk: int | None) -> float:
    """One training step; returns its loss."""
    if chunk is None:
        loss, _ = module.model_step(batch, module.layers)
        loss.backward()
    else:
        cached = module.cached_step(batch, module.layers, chunk)
        loss, _ = cached.loss()
        cached.backward(lambda surrogate: surrogate.backward())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def memory_worker(name: str, args: argparse.Namespace) -> dict:
    """Peak RSS growth over one warm step of variant ``name`` (bytes), and that step's loss."""
    pairs, chunk = variants(args)[name]
    module, optimizer = build(args.max_len)
    batch = make_batch(module, sentence_pairs(pairs))
    first = step(module, optimizer, batch, chunk)  # allocates AdamW states; they are at rest from now on
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    rest = kib("VmRSS")
    step(module, optimizer, batch, chunk)
    return {"bytes": kib("VmHWM") - rest, "loss": first}


def time_all(args: argparse.Namespace) -> dict[str, float]:
    """Median step seconds of every variant, interleaved within each round."""
    table = variants(args)
    built = {name: build(args.max_len) for name in table}
    batches = {name: make_batch(built[name][0], sentence_pairs(pairs)) for name, (pairs, _) in table.items()}
    return interleaved_medians({name: partial(step, *built[name], batches[name], table[name][1]) for name in table},
                               args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="query-positive pairs per step (and twice that)")
    parser.add_argument("--chunk", type=int, default=8, help="texts per forward pass of the cached step")
    parser.add_argument("--max-len", type=int, default=32, help="tokens per text")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args)))
        return
    table = variants(args)
    measured = in_subprocesses(__file__, table, sys.argv[1:])
    seconds = time_all(args)
    print(f"all-MiniLM-L6-v2, MEL+MLL+MRL, in-batch InfoNCE + AdamW, {args.max_len} tokens per text, cached chunk "
          f"{args.chunk} texts, CPU ({args.threads} threads), time: median of {args.repeats} interleaved rounds")
    print(f"  {'variant':<14} {'step ms':>9} {'peak MiB':>9} {'loss':>9}")
    for name in table:
        print(f"  {name:<14} {seconds[name] * 1e3:9.1f} {measured[name]['bytes'] / 2**20:9.1f} "
              f"{measured[name]['loss']:9.5f}")
    for pairs in (args.batch, 2 * args.batch):
        cached, plain = f"cached {pairs}", f"uncached {pairs}"
        memory = measured[cached]["bytes"] / measured[plain]["bytes"]
        print(f"  batch {pairs}: cached / uncached peak memory {memory:.2f}x, "
              f"step time {seconds[cached] / seconds[plain]:.2f}x, "
              f"|loss difference| {abs(measured[cached]['loss'] - measured[plain]['loss']):.1e}")
    small, large = args.batch, 2 * args.batch
    print(f"  doubling the batch: uncached peak memory "
          f"{measured[f'uncached {large}']['bytes'] / measured[f'uncached {small}']['bytes']:.2f}x, cached "
          f"{measured[f'cached {large}']['bytes'] / measured[f'cached {small}']['bytes']:.2f}x")


if __name__ == "__main__":
    main()
