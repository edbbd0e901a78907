"""Cost growth: step time and peak step memory as one axis grows with the others fixed, drawn and tabled.

Four axes, each point in its own process (so its memory is its own), ratios against the axis's smallest point
measured in the same run:

- **vocabulary size** (MEL's token embedding alone, forward + backward, hidden 384, rank 128, batch 32 x 64 uniform
  random ids, the worst case for distinct tokens): mlembed's gather-first ``FactorizedEmbedding`` (the batch's
  distinct rows of A, times B) vs the reference's full product ``A[:, :k] @ B[:k]`` then indexing;
- **MRL dims** (1, 3, 7 prefixes of 384, halving: 384 ... 6): all-MiniLM-L6-v2 (real weights), batch 32 pairs x 32
  tokens, MLL and MEL off, in-batch InfoNCE + AdamW;
- **MLL loss layers** (1, 3, 6 of the 6): same model and batch, MRL at the full dim only; one forward serves all
  layers;
- **batch size** (16, 32, 64 pairs) with and without gradient caching (16 texts per chunk): same model, MLL {2, 4, 6},
  MRL {64, 128, 384} (configs/demo.yaml's axes), MEL off (its cost is the vocabulary axis).

Step time: median of ``--repeats`` steps after a warm step. Peak step memory: the growth of the process's peak RSS
over one warm step (the kernel's peak counter reset just before it), i.e. what a step allocates beyond the weights,
gradients and AdamW states at rest. The verdict per series is the log-log slope between its first and last point:
"flat" only when the cost grows by at most 15% over the whole range.

Writes ``<out>/bench_scaling.png`` (one figure: time and memory per axis) and ``<out>/bench_scaling.md`` (the table).

    python benchmarks/bench_scaling.py [--repeats 3] [--out benchmarks/results]
    python benchmarks/bench_scaling.py --smoke --out /tmp/x   # seconds: toy sizes, two points per axis
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import stop
from torch import nn

HERE = Path(__file__).resolve().parent
MiB = 2**20
FLAT = 1.15  # "flat": the last point costs at most this much of the first


# -- the points ----------------------------------------------------------------------------------------------
def points(args) -> list[dict]:
    """Every measurement: axis, series, x and what the worker needs."""
    if args.smoke:
        vocabs, dims, layers, batches = [512, 2048], [1, 2], [1, 2], [4, 8]
    else:
        vocabs, dims, layers, batches = [8192, 32768, 131072, 262144], [1, 3, 7], [1, 3, 6], [16, 32, 64]
    out = []
    for v in vocabs:
        for series in ("reference (full product)", "mlembed (gather-first)"):
            out.append({"axis": "vocabulary size", "series": series, "x": v})
    all_dims = [384, 192, 96, 48, 24, 12, 6]
    for n in dims:
        out.append({"axis": "MRL dims", "series": "mlembed", "x": n, "dims": all_dims[:n]})
    layer_sets = {1: [6], 2: [3, 6], 3: [2, 4, 6], 6: [1, 2, 3, 4, 5, 6]}  # spread over the depth
    for n in layers:
        out.append({"axis": "MLL loss layers", "series": "mlembed", "x": n, "layers": layer_sets[n]})
    for b in batches:
        for series in ("uncached", "gradient caching"):
            out.append({"axis": "batch size", "series": series, "x": b})
    return out


# -- the worker: one point, in its own process --------------------------------------------------------------
class ReferenceEmbedding(nn.Module):
    """The reference's MEL embedding: the dense vocab x hidden matrix ``A[:, :k] @ B[:k]`` built every step."""

    def __init__(self, vocab: int, hidden: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(vocab, rank) * 0.02)
        self.B = nn.Parameter(torch.randn(rank, hidden) * 0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.A @ self.B)


def rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def vocab_step(point: dict, args):
    from mlembed.axes.mel import FactorizedEmbedding

    hidden, rank, (batch, seq) = (32, 16, (2, 8)) if args.smoke else (384, 128, (32, 64))
    torch.manual_seed(0)
    if point["series"].startswith("reference"):
        module = ReferenceEmbedding(point["x"], hidden, rank)
    else:
        module = FactorizedEmbedding(point["x"], hidden, rank)
        with torch.no_grad():
            module.A.normal_(std=0.02)
            module.B.normal_(std=0.02)
            module.initialized.fill_(True)
    ids = torch.randint(0, point["x"], (batch, seq), generator=torch.Generator().manual_seed(0))
    grad_out = torch.randn(batch, seq, hidden)

    def step() -> None:
        module(ids).backward(grad_out)

    def rest() -> None:
        module.zero_grad(set_to_none=False)  # gradients stay allocated, as in training between steps

    return step, rest


def model_step(point: dict, args):
    from common import make_batch, minilm_dir, sentence_pairs

    from mlembed.axes.mel import MEL
    from mlembed.axes.mll import MLL
    from mlembed.axes.mrl import MRL
    from mlembed.backbone import BackboneConfig
    from mlembed.module import EmbeddingModule
    from mlembed.pooling import MeanPooling

    max_len, pairs = (8, 4) if args.smoke else (32, args.pairs)
    # smoke: a random-init 6-layer, 32-wide BERT with MiniLM's tokenizer (no weights to load); dims shrink to fit
    shrink = 12 if args.smoke else 1
    if point["axis"] == "MRL dims":
        dims = [d // shrink for d in point["dims"]]
        mll, mrl = MLL(enabled=False), MRL(dims=dims, weights=[1.0] * len(dims))
    elif point["axis"] == "MLL loss layers":
        mll, mrl = MLL(layers=point["layers"]), MRL(enabled=False)
    else:
        dims = [d // shrink for d in (64, 128, 384)]
        mll, mrl = MLL(layers=[2, 4, 6]), MRL(dims=dims, weights=[1.0] * len(dims))
        pairs = point["x"]
    chunk = 16 if point["series"] == "gradient caching" else None
    if args.smoke and chunk:
        chunk = 2
    torch.manual_seed(0)
    if args.smoke:
        backbone = BackboneConfig(config={"model_type": "bert", "vocab_size": 30522, "hidden_size": 32,
                                          "num_hidden_layers": 6, "num_attention_heads": 2, "intermediate_size": 64},
                                  tokenizer=minilm_dir(), max_seq_length=max_len)
    else:
        backbone = BackboneConfig(pretrained=minilm_dir(), max_seq_length=max_len)
    module = EmbeddingModule(backbone, pooling=MeanPooling(), mel=MEL(enabled=False), mll=mll, mrl=mrl)
    module.configure_model()
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    batch = make_batch(module, sentence_pairs(pairs))

    def step() -> None:
        if chunk is None:
            loss, _ = module.model_step(batch, module.layers)
            loss.backward()
        else:
            cached = module.cached_step(batch, module.layers, chunk)
            cached.loss()
            cached.backward(lambda surrogate: surrogate.backward())
        optimizer.step()

    def rest() -> None:
        optimizer.zero_grad(set_to_none=False)

    return step, rest


def worker(point: dict, args) -> dict:
    torch.set_num_threads(args.threads)
    step, rest = (vocab_step if point["axis"] == "vocabulary size" else model_step)(point, args)
    step()  # warm: allocates gradients (and AdamW states), which are at rest from now on
    rest()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = rss("VmRSS")
    step()
    peak = rss("VmHWM") - before
    times = []
    for _ in range(args.repeats):
        rest()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "bytes": max(peak, 0)}


# -- the driver ----------------------------------------------------------------------------------------------
def measure(point: dict, argv: list[str]) -> subprocess.Popen:
    """Start the worker that measures ``point`` (its own process: its own peak RSS); ``result`` reads it."""
    return subprocess.Popen([sys.executable, __file__, *argv, "--point", json.dumps(point)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(point: dict, worker: subprocess.Popen) -> dict:
    out, err = worker.communicate()
    if worker.returncode != 0:
        raise SystemExit(f"point {point} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def slope(series: list[dict], key: str) -> float:
    """log-log slope between the first and last point (0: flat, 1: linear)."""
    first, last = series[0], series[-1]
    return math.log(max(last[key], 1e-12) / max(first[key], 1e-12)) / math.log(last["x"] / first["x"])


def verdict(series: list[dict], key: str) -> str:
    growth = series[-1][key] / max(series[0][key], 1e-12)
    if growth <= FLAT:
        return f"flat ({growth:.2f}x)"
    return f"grows {growth:.2f}x (~x^{slope(series, key):.2f})"


def by_series(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        out.setdefault((r["axis"], r["series"]), []).append(r)
    return out


def table(results: list[dict]) -> str:
    lines = ["| axis | series | x | step ms | x first | peak step MiB | x first |", "|---|---|---|---|---|---|---|"]
    for (axis, series), rows in by_series(results).items():
        for r in rows:
            lines.append(f"| {axis} | {series} | {r['x']:,} | {r['seconds'] * 1e3:,.1f} | "
                         f"{r['seconds'] / rows[0]['seconds']:.2f}x | {r['bytes'] / MiB:,.1f} | "
                         f"{r['bytes'] / max(rows[0]['bytes'], 1):.2f}x |")
    lines += ["", "| axis | series | range | step time | peak step memory |", "|---|---|---|---|---|"]
    for (axis, series), rows in by_series(results).items():
        lines.append(f"| {axis} | {series} | {rows[0]['x']:,} -> {rows[-1]['x']:,} | {verdict(rows, 'seconds')} | "
                     f"{verdict(rows, 'bytes')} |")
    return "\n".join(lines)


def read_table(path: Path) -> list[dict]:
    """The measurements back from a table that ``table`` wrote."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[2].replace(",", "").isdigit():
            rows.append({"axis": cells[0], "series": cells[1], "x": int(cells[2].replace(",", "")),
                         "seconds": float(cells[3].replace(",", "")) / 1e3,
                         "bytes": float(cells[5].replace(",", "")) * MiB})
    return rows


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = by_series(results)
    axes_names = list(dict.fromkeys(r["axis"] for r in results))
    fig, grid = plt.subplots(2, len(axes_names), figsize=(4 * len(axes_names), 7), squeeze=False)
    for col, axis in enumerate(axes_names):
        for row, (key, label, unit) in enumerate((("seconds", "step time", "ms"),
                                                  ("bytes", "peak step memory", "MiB"))):
            ax = grid[row][col]
            top, bottom = 2.0, 0.5
            for (a, series), rows in grouped.items():
                if a != axis:
                    continue
                first = max(rows[0][key], 1e-12)
                ratios = [r[key] / first for r in rows]
                top, bottom = max(top, *ratios), min(bottom, *ratios)
                absolute = first * (1e3 if unit == "ms" else 1 / MiB)
                ax.plot([r["x"] for r in rows], ratios, "o-", label=f"{series} ({absolute:,.1f} {unit} at {rows[0]['x']:,})")
            ax.axhspan(1 / FLAT, FLAT, color="0.85", zorder=0, label=f"flat (within {FLAT - 1:.0%})")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylim(bottom / 1.3, top * 1.3)
            ax.set_xlabel(axis)
            ax.set_ylabel(f"{label} / first point")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
            if row == 0:
                ax.set_title(axis)
    fig.suptitle("cost growth, one axis at a time, as a ratio to each series' first point (CPU; log-log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per point (1 on a shared machine)")
    parser.add_argument("--pairs", type=int, default=32, help="pairs per step on the MRL and MLL axes")
    parser.add_argument("--out", default=str(HERE / "results"), help="where the PNG and the table go")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, two points per axis (seconds)")
    parser.add_argument("--jobs", type=int, default=1, help="points measured at once (more than 1 only to check "
                        "the code paths: side by side, the points' times are not comparable)")
    parser.add_argument("--replot", action="store_true", help="redraw the PNG from the table in --out (no measuring)")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: measure one point
    args = parser.parse_args()
    if args.replot:
        plot(read_table(Path(args.out) / "bench_scaling.md"), Path(args.out) / "bench_scaling.png")
        return
    if args.point:
        print(json.dumps(worker(json.loads(args.point), args)))
        return
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.smoke:
        args.repeats = 1
    begin = time.perf_counter()
    argv = ["--repeats", str(args.repeats), "--threads", str(args.threads), "--pairs", str(args.pairs)]
    argv += ["--smoke"] if args.smoke else []
    results, todo = [], points(args)
    # One point at a time unless --jobs says otherwise: points measured side by side slow each other's steps.
    workers = [measure(point, argv) for point in todo[: args.jobs]]
    for i, point in enumerate(todo):
        try:
            measured = result(point, workers[i])
        except BaseException:
            stop(workers[i:])  # the points still running stop too
            raise
        if i + args.jobs < len(todo):
            workers.append(measure(todo[i + args.jobs], argv))
        results.append({k: v for k, v in point.items() if k in ("axis", "series", "x")} | measured)
        print(f"  {point['axis']:<16} {point['series']:<26} {point['x']:>8,}: {measured['seconds'] * 1e3:9.1f} ms, "
              f"peak step {measured['bytes'] / MiB:8.1f} MiB", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(results)
    header = (f"CPU, {args.threads} threads, {os.cpu_count()} cores, torch {torch.__version__}; step time: median of "
              f"{args.repeats} steps; peak step memory: peak RSS growth over one warm step"
              + (f"; {args.jobs} points at once: the times are NOT comparable" if args.jobs > 1 else ""))
    (out / "bench_scaling.md").write_text(f"{header}\n\n{text}\n")
    plot(results, out / "bench_scaling.png")
    print(f"\n{header}\n\n{text}\n\nwrote {out / 'bench_scaling.png'} and {out / 'bench_scaling.md'}")
    print(f"total {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
