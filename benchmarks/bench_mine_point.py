"""Mining at a cheap point of a 3D-ML model, then rescoring at the full one: what it saves and what it changes.

Three runs of ``mlembed mine`` on the same pairs (Django's translations, as in ``bench_mine.py``) with one trained
3D-ML model, in this one process, one after the other:

- ``full``: retrieval and selection at the model's full point (the reference);
- ``cheap``: retrieval and selection at ``--point`` alone;
- ``cheap + rescore``: retrieval at ``--point``, the window rescored at the full point (``mlembed mine --point``).

Printed: each run's seconds and the ratio to ``full``, the passages the rescoring embedded again (the union of the
windows, as a share of the corpus: what decides the saving), and the overlap of each run's negatives with
``full``'s, row by row.

    python benchmarks/bench_mine_point.py --model runs/demo/lightning_logs/version_0/checkpoints/last.ckpt \\
        [--point 64,2,128] [--pairs 5000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_mine import SETTINGS, pairs

import mlembed
from mlembed.cli.mine import parse_point
from mlembed.mining import MineSettings, PointEncoder, SearchSettings, mine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a 3D-ML checkpoint or efficiency export")
    parser.add_argument("--point", default="64,2,128", help="the cheap RANK,DEPTH,DIM")
    parser.add_argument("--pairs", type=int, default=5000, help="pairs mined (the corpus is their positives)")
    args = parser.parse_args()
    embedder = mlembed.load(args.model)
    point = parse_point(args.point)
    data = pairs(args.pairs)
    settings = MineSettings(per_source=False, **SETTINGS)
    runs = {"full": (PointEncoder(embedder, (None, None, None), 64), None),
            "cheap": (PointEncoder(embedder, point, 64), None),
            "cheap + rescore": (PointEncoder(embedder, point, 64), PointEncoder(embedder, (None, None, None), 64))}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "pairs.jsonl"
        records.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in data))
        for name, (encoder, rescorer) in runs.items():
            out = Path(tmp) / name.replace(" ", "")
            start = time.perf_counter()
            mine(encoder, [records], out, settings=settings, search=SearchSettings(), rescorer=rescorer,
                 progress=False, log=lambda _: None, keep_work=True)
            seconds = time.perf_counter() - start
            rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
            rescored = out / ".mine-work" / "rescore-corpus.npy"
            results[name] = {"seconds": seconds, "chosen": [r["negatives"] for r in rows],
                             "rescored": len(np.load(rescored, mmap_mode="r")) if rescored.exists() else 0}
    print(f"{Path(args.model).name}: {len(data)} pairs of Django translations, cheap point {args.point}; "
          f"7 negatives, window 70, relative margin 0.05\n")
    print(f"{'run':>16} | {'seconds':>8} | {'x full':>6} | {'passages rescored':>17} | {'overlap with full':>17}")
    reference = results["full"]
    for name, result in results.items():
        shared = [len(set(a) & set(b)) / len(b) for a, b in zip(result["chosen"], reference["chosen"], strict=True)
                  if b]
        print(f"{name:>16} | {result['seconds']:>8.1f} | {result['seconds'] / reference['seconds']:>6.2f} | "
              f"{result['rescored'] / len(data):>17.3f} | {sum(shared) / max(len(shared), 1):>17.3f}")


if __name__ == "__main__":
    main()
