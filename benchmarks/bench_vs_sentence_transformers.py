"""mlembed vs sentence-transformers: the same model, batch and (as far as possible) loss, training-step time.

Pairs compared, each a step of loss + backward + AdamW on all-MiniLM-L6-v2 (real weights) with the same
pre-tokenized batch of real sentence pairs:

- MRL: sentence-transformers MatryoshkaLoss(MultipleNegativesRankingLoss) vs mlembed MRL (MEL and MLL off);
  same dims, weight 1 each, scale 20 = temperature 0.05, cosine similarity, in-batch negatives, no hard
  negatives. These two losses are the same function: the script prints both values on the first batch.
- MRL + MLL: Matryoshka2dLoss (every layer and dim each step, kl_div_weight 0) vs mlembed MRL + MLL on layers
  1-6. Difference: sentence-transformers' total is the last layer's loss plus the mean of the 5 prior layers'
  losses; mlembed's is the mean of all 6 layers' (the reference's MLL). Both use every layer.

Time is the median over ``--repeats`` rounds in one process, the four steps interleaved in each round.

    python benchmarks/bench_vs_sentence_transformers.py [--batch 32] [--max-len 32] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import minilm_dir, sentence_pairs

from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig
from mlembed.losses import ContrastiveLoss
from mlembed.module import EmbeddingModule
from mlembed.pooling import MeanPooling
from mlembed.text import text_hash

DIMS = [384, 256, 128, 64, 32, 16, 8]


def st_loss(two_d: bool, pairs: list[tuple[str, str]], max_len: int) -> tuple[torch.nn.Module, Callable]:
    """sentence-transformers' model and a closure computing its loss on the pre-tokenized batch."""
    from sentence_transformers import SentenceTransformer, losses

    model = SentenceTransformer(minilm_dir(), device="cpu")
    model.max_seq_length = max_len
    base = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    if two_d:
        loss = losses.Matryoshka2dLoss(model, base, DIMS, n_layers_per_step=-1, n_dims_per_step=-1, kl_div_weight=0.0)
    else:
        loss = losses.MatryoshkaLoss(model, base, DIMS)
    features = [model.tokenize([q for q, _ in pairs]), model.tokenize([p for _, p in pairs])]
    labels = torch.zeros(len(pairs))  # unused by MultipleNegativesRankingLoss
    return model, lambda: loss(features, labels)


def mlembed_loss(two_d: bool, pairs: list[tuple[str, str]], max_len: int) -> tuple[torch.nn.Module, Callable]:
    """mlembed's module and a closure computing its loss on the pre-tokenized batch."""
    module = EmbeddingModule(
        BackboneConfig(pretrained=minilm_dir(), max_seq_length=max_len),
        pooling=MeanPooling(),
        mel=MEL(enabled=False),
        mll=MLL(enabled=two_d, layers=[1, 2, 3, 4, 5, 6]),
        mrl=MRL(dims=DIMS, weights=[1.0] * len(DIMS)),
        loss=ContrastiveLoss(temperature=0.05, mask_false_negatives=False),
    )
    module.configure_model()
    queries, positives = [q for q, _ in pairs], [p for _, p in pairs]
    batch = {
        "query": module.encoder.text_tokenizer(queries), "positive": module.encoder.text_tokenizer(positives), "num_negatives": 0,
        "query_hash": torch.tensor([text_hash(t) for t in queries]),
        "positive_hash": torch.tensor([text_hash(t) for t in positives]), "task": "retrieval",
    }
    return module, lambda: module.model_step(batch, module.layers)[0]


def stepper(model: torch.nn.Module, loss_fn: Callable) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def first_losses(runs: dict) -> dict[str, float]:
    """Each loss on the batch before any step, without dropout."""
    values = {}
    for name, (model, loss_fn) in runs.items():
        model.eval()
        with torch.no_grad():
            values[name] = float(loss_fn())
        model.train()
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="query-positive pairs per step")
    parser.add_argument("--max-len", type=int, default=32, help="tokens per text")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pairs = sentence_pairs(args.batch)
    runs = {
        "st MRL": st_loss(False, pairs, args.max_len),
        "mlembed MRL": mlembed_loss(False, pairs, args.max_len),
        "st MRL+MLL": st_loss(True, pairs, args.max_len),
        "mlembed MRL+MLL": mlembed_loss(True, pairs, args.max_len),
    }
    losses = first_losses(runs)
    steps = {name: stepper(*run) for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"all-MiniLM-L6-v2, batch {args.batch} pairs x {args.max_len} tokens, loss + backward + AdamW, CPU "
          f"({args.threads} threads), median of {args.repeats} interleaved rounds")
    for name in steps:
        print(f"  {name:<16} {median[name] * 1e3:8.1f} ms/step   first loss {losses[name]:.4f}")
    for axes in ("MRL", "MRL+MLL"):
        ratio = median[f"mlembed {axes}"] / median[f"st {axes}"]
        print(f"  {axes:<8} mlembed / sentence-transformers step time: {ratio:.2f}x (target <= 1.0x)")
    print("  Loss definitions: MRL identical (compare the first losses). MRL+MLL: sentence-transformers = last")
    print("  layer + mean of the 5 prior layers, mlembed = mean of the 6 layers; same dims, weights 1, scale 20,")
    print("  in-batch negatives only, one backbone forward per text in both.")


if __name__ == "__main__":
    main()
