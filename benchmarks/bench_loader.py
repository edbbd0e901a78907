"""Loader benchmark: is the data pipeline fast enough, and does length-aware batching pay off?

Prints ratios measured in the same run on the same machine:
1. streaming + tokenizing throughput of ``ShardDataModule`` (samples/s) over the consumption rate of a training
   step (forward + backward + AdamW) of a tiny BERT and of a MiniLM-sized BERT on the same batches
   (target: loader / model >= 5x);
2. tokens per batch with length-aware batching vs padding every batch to ``max_seq_length`` (and vs batching
   without bucketing), and the MiniLM-sized step time on both (target >= 1.5x faster).

Data: the embedded demo (Django + chatterbot), a subset of locales so a first run builds it in seconds.
Usage: ``python benchmarks/bench_loader.py [--batches 300] [--steps 5] [--data DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from common import minilm_dir

from mlembed.data.datamodule import LoaderSettings, ShardDataModule, StageSettings
from mlembed.demo.data import DemoSettings, build_demo
from mlembed.text import TextTokenizer

LOCALES = ["de", "fr", "es", "it", "pl", "ru", "uk", "ja", "zh_Hans", "ko", "ar", "fa", "hi", "tr", "vi", "id"]
MAX_LEN = 128


def datamodule(root, tokenizer, bucket_batches: int, batch_size: int, steps: int) -> ShardDataModule:
    return ShardDataModule(
        StageSettings([f"{root}/stage1/train"], steps=steps // 2, batch_size=batch_size),
        StageSettings([f"{root}/stage2/train"], steps=steps - steps // 2, batch_size=batch_size, instructions=True),
        loader=LoaderSettings(seed=0, bucket_batches=bucket_batches),
        tokenizer=tokenizer,
    )


def load(dm: ShardDataModule) -> tuple[list[dict], float]:
    """All training batches of ``dm`` and the samples per second the loader delivered them at."""
    start = time.perf_counter()
    batches = list(dm.train_dataloader())
    seconds = time.perf_counter() - start
    return batches, sum(len(b["ids"]) for b in batches) / seconds


def bert(vocab: int, layers: int, hidden: int):
    from transformers import AutoModel, BertConfig

    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(hidden // 64, 2), intermediate_size=4 * hidden,
                        max_position_embeddings=512)
    return AutoModel.from_config(config)


def embed(model, inputs: dict) -> torch.Tensor:
    hidden = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)  # mean pooling -> [B, H]


def train_rate(model, batches: list[dict]) -> tuple[float, float]:
    """(samples/s, seconds per step) of in-batch InfoNCE training steps on ``batches`` (first one warms up)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    samples, seconds = 0, 0.0
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        docs = batch["positive"]
        if "negatives" in batch:
            docs = {k: torch.cat([pad_to(batch["positive"], batch["negatives"]["input_ids"].shape[1])[k],
                                  pad_to(batch["negatives"], batch["positive"]["input_ids"].shape[1])[k]])
                    for k in ("input_ids", "attention_mask")}
        scores = embed(model, batch["query"]) @ embed(model, docs).T / 0.05  # [B, B + B*N]
        loss = F.cross_entropy(scores, torch.arange(scores.shape[0]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i > 0:
            seconds += time.perf_counter() - start
            samples += len(batch["ids"])
    return samples / seconds, seconds / max(len(batches) - 1, 1)


def pad_to(inputs: dict, width: int) -> dict:
    """``inputs`` right-padded with id 0 / mask 0 to at least ``width`` tokens."""
    extra = max(width - inputs["input_ids"].shape[1], 0)
    return {k: F.pad(v, (0, extra)) for k, v in inputs.items()}


def padded_to_max(batch: dict) -> dict:
    out = dict(batch)
    for key in ("query", "positive", "negatives"):
        if key in batch:
            out[key] = pad_to(batch[key], MAX_LEN)
    return out


def tokens(batches: list[dict]) -> float:
    """Mean token slots (real + padding) per batch over query, positive and negatives."""
    keys = ("query", "positive", "negatives")
    return sum(b[k]["input_ids"].numel() for b in batches for k in keys if k in b) / len(batches)


def real_fraction(batches: list[dict]) -> float:
    keys = ("query", "positive", "negatives")
    real = sum(b[k]["attention_mask"].sum().item() for b in batches for k in keys if k in b)
    return real / (tokens(batches) * len(batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300,
                        help="batches streamed for the loader rate (enough to amortise opening shards and filling "
                        "the shuffle buffer, as a training run does)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "mlembed-bench-demo"))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(os.cpu_count() or 1, 1))

    start = time.perf_counter()
    build_demo(args.data, DemoSettings(locales=LOCALES, languages=["english", "spanish", "russian", "chinese"]))
    print(f"demo data ready in {time.perf_counter() - start:.1f} s ({args.data})")
    tokenizer = TextTokenizer(minilm_dir(), max_seq_length=MAX_LEN)
    tokenizer([""])  # load it outside the timed region

    bucketed, loader_rate = load(datamodule(args.data, tokenizer, 16, args.batch_size, args.batches))
    plain, plain_rate = load(datamodule(args.data, tokenizer, 1, args.batch_size, args.batches))
    print(f"\n[1] loader (1 process, stream + shuffle + bucket + tokenize): {loader_rate:,.0f} samples/s "
          f"(without bucketing {plain_rate:,.0f})")
    # Stage-1 batches (no hard negatives) and stage-2 batches (7 for retrieval) both count.
    steps = bucketed[: args.steps + 1]
    vocab = tokenizer.tokenizer.vocab_size
    tiny_rate, _ = train_rate(bert(vocab, 2, 128), steps)
    mini_rate, mini_step = train_rate(bert(vocab, 6, 384), steps)
    print(f"    tiny BERT (2x128) training:  {tiny_rate:,.1f} samples/s -> loader / model = "
          f"{loader_rate / tiny_rate:.1f}x (target >= 5x)")
    print(f"    MiniLM-sized (6x384) training: {mini_rate:,.1f} samples/s -> loader / model = "
          f"{loader_rate / mini_rate:.1f}x")

    stage1 = [b for b in bucketed if b["stage"] == 1][: args.steps + 1]
    full = [padded_to_max(b) for b in stage1]
    print(f"\n[2] tokens per batch (query + positive + negatives, all batches): length-aware "
          f"{tokens(bucketed):,.0f}, no bucketing {tokens(plain):,.0f}, padded to {MAX_LEN}: "
          f"{tokens([padded_to_max(b) for b in bucketed]):,.0f}")
    print(f"    padded-to-max / length-aware = {tokens([padded_to_max(b) for b in bucketed]) / tokens(bucketed):.2f}x; "
          f"no-bucketing / length-aware = {tokens(plain) / tokens(bucketed):.2f}x; real-token share "
          f"{real_fraction(bucketed):.0%} vs {real_fraction(plain):.0%} without bucketing")
    model = bert(vocab, 6, 384)
    _, step_bucketed = train_rate(model, stage1)
    _, step_full = train_rate(model, full)
    print(f"    MiniLM-sized step on stage-1 batches: length-aware {step_bucketed:.3f} s, padded to {MAX_LEN} "
          f"{step_full:.3f} s -> {step_full / step_bucketed:.1f}x faster (target >= 1.5x)")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
