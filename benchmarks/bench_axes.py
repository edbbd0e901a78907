"""What each Matryoshka axis costs: training-step time and peak step memory, plain contrastive vs each axis alone
vs all three, on the same backbone (all-MiniLM-L6-v2, real weights) and the same batch of real sentence pairs.

A step is model_step (in-batch InfoNCE) + backward + AdamW. Time: the median over ``--repeats`` rounds in one
process, the variants interleaved within each round (in a rotating order) so a changing machine load hits them
alike. Memory: each
variant in its own subprocess; the peak RSS growth over one warm step (the kernel's peak counter is reset just
before it), i.e. activations and temporaries, beyond the weights, gradients and AdamW states at rest.
MEL runs at its full rank 384 (the costliest rank the RankSampler can draw); MLL on layers {1, 2, 4, 6};
MRL on dims {384, 256, 128, 64, 32, 16, 8}.

    python benchmarks/bench_axes.py [--batch 16] [--max-len 32] [--repeats 7]
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

#: name -> (MEL, MLL, MRL) switched on
VARIANTS = {
    "plain": (False, False, False),
    "MEL": (True, False, False),
    "MLL": (False, True, False),
    "MRL": (False, False, True),
    "MEL+MLL+MRL": (True, True, True),
}


def build(variant: str, max_len: int) -> tuple[EmbeddingModule, torch.optim.Optimizer]:
    mel, mll, mrl = VARIANTS[variant]
    module = EmbeddingModule(
        BackboneConfig(pretrained=minilm_dir(), max_seq_length=max_len),
        pooling=MeanPooling(),
        mel=MEL(enabled=mel, rank=384, ranks=[64, 128, 256, 384]),
        mll=MLL(enabled=mll, layers=[1, 2, 4, 6]),
        mrl=MRL(enabled=mrl),
    )
    module.configure_model()
    if mel:
        module.init_mel_from_svd()
    module.train()
    return module, torch.optim.AdamW(module.parameters(), lr=1e-5)


def train_step(module: EmbeddingModule, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    loss, _ = module.model_step(batch, module.layers)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def memory_worker(variant: str, args: argparse.Namespace) -> int:
    """Peak RSS growth over one warm training step of ``variant`` (bytes)."""
    module, optimizer = build(variant, args.max_len)
    batch = make_batch(module, sentence_pairs(args.batch))
    train_step(module, optimizer, batch)  # allocates AdamW states; they are at rest from now on
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    rest = kib("VmRSS")
    train_step(module, optimizer, batch)
    return kib("VmHWM") - rest


def time_all(args: argparse.Namespace) -> dict[str, float]:
    """Median step seconds of every variant, interleaved within each round."""
    pairs = sentence_pairs(args.batch)
    built = {name: build(name, args.max_len) for name in VARIANTS}
    batches = {name: make_batch(module, pairs) for name, (module, _) in built.items()}
    for name, (module, optimizer) in built.items():
        train_step(module, optimizer, batches[name])  # warm-up
    return interleaved_medians({name: partial(train_step, *built[name], batches[name]) for name in built},
                               args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="query-positive pairs per step")
    parser.add_argument("--max-len", type=int, default=32, help="tokens per text")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_worker:
        print(json.dumps({"bytes": memory_worker(args.memory_worker, args)}))
        return
    memory = {name: r["bytes"] for name, r in in_subprocesses(__file__, VARIANTS, sys.argv[1:]).items()}
    seconds = time_all(args)
    print(f"all-MiniLM-L6-v2, batch {args.batch} pairs x {args.max_len} tokens, in-batch InfoNCE + AdamW, CPU "
          f"({args.threads} threads), median of {args.repeats} interleaved rounds")
    print(f"  {'variant':<12} {'step ms':>9} {'x plain':>8} {'peak MiB':>9} {'x plain':>8}")
    for name in VARIANTS:
        print(f"  {name:<12} {seconds[name] * 1e3:9.1f} {seconds[name] / seconds['plain']:7.2f}x "
              f"{memory[name] / 2**20:9.1f} {memory[name] / memory['plain']:7.2f}x")
    ratio = seconds["MEL+MLL+MRL"] / seconds["plain"]
    print(f"  all three axes / plain step time: {ratio:.2f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
