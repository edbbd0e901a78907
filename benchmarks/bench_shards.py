"""Shard-writing benchmark: records/s and peak memory of ``shards --format f2llm``, 1 worker vs 2.

Data: a synthetic release in the F2LLM-v2 layout, generated in a temporary directory: ``--rows`` rows in all over
4 parquet files, one per source (``msmarco`` and ``hotpotqa``: retrieval, 24 negatives; ``banking77``: clustering,
24 negatives; ``imdb``: classification, 1 negative), row groups of 10,000 rows, texts of 40-80 (query) and
100-300 characters (passage, negatives) cut from a random word stream. A second release of a quarter of the rows
checks that memory does not grow with the files.

Every variant is its own process tree, ``python -m mlembed shards --format f2llm ...`` (the code of
``python -m mlembed shards`` without the dispatcher's Lightning import), timed from start to exit (process starts
and imports included). Its memory, sampled from /proc every 20 ms: the peak of the summed RSS of the process and
its descendants (the worker processes), the same with PSS (shared pages, such as torch's libraries, split among
the processes that share them), and the largest peak RSS (VmHWM) of one process. Ratios are against the 1-worker
run of the same invocation, on the same machine. The CPU time (user + system, all processes) over the wall time
says how many cores a run got: workers only speed the build up where there are cores to spare.

Usage: ``python benchmarks/bench_shards.py [--rows 1000000] [--dir DIR] [--keep]``.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TreePeaks

SOURCES = {"msmarco": (0.35, 24), "hotpotqa": (0.25, 24), "banking77": (0.25, 24), "imdb": (0.15, 1)}
"""Source -> (share of the rows, negative columns)."""
ROW_GROUP = 10_000
MiB = 1024 * 1024


def make_release(directory: Path, rows: int, seed: int = 0) -> list[Path]:
    """The synthetic release: one parquet file per source, written one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))))
             for _ in range(5000)]
    stream = " ".join(rng.choice(words) for _ in range(400_000))

    def cut(low: int, high: int) -> str:
        start = rng.randrange(len(stream) - high)
        return stream[start:start + rng.randint(low, high)]

    # Pools of texts drawn from for every cell: fresh texts for a million rows would take longer than the build.
    queries = [cut(40, 80) for _ in range(50_000)]
    passages = [cut(100, 300) for _ in range(200_000)]

    directory.mkdir(parents=True, exist_ok=True)
    paths, left = [], rows
    for i, (source, (share, negatives)) in enumerate(SOURCES.items()):
        count = left if i == len(SOURCES) - 1 else round(rows * share)
        left -= count
        path = directory / f"{source}.parquet"
        schema = pa.schema([(name, pa.string()) for name in
                            ["query", "passage", *(f"negative_{k}" for k in range(1, negatives + 1))]])
        with pq.ParquetWriter(path, schema) as writer:
            for start in range(0, count, ROW_GROUP):
                n = min(ROW_GROUP, count - start)
                columns = [rng.choices(queries, k=n)] + [rng.choices(passages, k=n) for _ in range(1 + negatives)]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
        paths.append(path)
    return paths


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished, waited-for descendants of this process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str], rows: int | None) -> dict:
    """Run one shard build as a process tree; its wall time, records/s and peak memory."""
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreePeaks(proc) as tree:
        out, err = proc.communicate()
        seconds = time.perf_counter() - start
    peak = {**tree.peak, "cpu": _children_cpu() - cpu}  # the process and every descendant it waited for
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err[-3000:]}")
    if rows is None:
        return peak
    if f", {rows} samples" not in out:
        raise SystemExit(f"expected {rows} samples, the command printed:\n{out}")
    return {"seconds": seconds, "rate": rows / seconds, **peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic release (1,000,000)")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (10,000)")
    p.add_argument("--dir", help="work directory (default: a new temporary one, deleted at the end)")
    p.add_argument("--keep", action="store_true", help="keep the generated release and shards")
    args = p.parse_args()
    if args.rows < 8:
        p.error("--rows must be at least 8 (two rows for each of the 4 sources)")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mlembed-bench-shards-"))
    total = time.perf_counter()
    try:
        start = time.perf_counter()
        full = make_release(work / "release", args.rows)
        quarter_rows = max(args.rows // 4, 8)
        quarter = make_release(work / "quarter", quarter_rows, seed=1)
        size = sum(f.stat().st_size for f in full)
        print(f"synthetic F2LLM-v2 release: {args.rows:,} rows in {len(full)} parquet files "
              f"({', '.join(f'{s}: {n} neg' for s, (_, n) in SOURCES.items())}), {size / MiB:,.0f} MiB, "
              f"row groups of {ROW_GROUP:,}; made in {time.perf_counter() - start:.0f} s "
              f"(+ a quarter-size copy, {quarter_rows:,} rows)")

        def command(files: list[Path], out: str, workers: int) -> list[str]:
            return [sys.executable, "-m", "mlembed", "shards", "--format", "f2llm", "--input",
                    *map(str, files), "--output", str(work / out), "--shard-size", str(args.shard_size),
                    "--workers", str(workers)]

        idle = run([sys.executable, "-c", "import mlembed.data.f2llm, pyarrow.parquet, webdataset, time; "
                    "time.sleep(1)"], None)
        print(f"{'imports of a writer':>26}: peak RSS {idle['rss'] / MiB:,.0f} MiB, PSS {idle['pss'] / MiB:,.0f} "
              "MiB (pyarrow, and torch, which webdataset imports; with --workers the parent does not import them)")
        results = {}
        variants = (("1 worker", full, args.rows, 1), ("2 workers", full, args.rows, 2),
                    ("1 worker, 1/4 of the rows", quarter, quarter_rows, 1))
        for i, (name, files, rows, workers) in enumerate(variants):
            results[name] = result = run(command(files, f"out{i}", workers), rows)
            print(f"{name:>26}: {result['seconds']:6.1f} s, {result['rate']:7,.0f} records/s, CPU "
                  f"{result['cpu']:5.1f} s ({result['cpu'] / result['seconds']:.2f} cores busy); process tree "
                  f"({result['processes']} processes) peak RSS {result['rss'] / MiB:5,.0f} MiB, PSS "
                  f"{result['pss'] / MiB:5,.0f} MiB; largest process {result['largest'] / MiB:4,.0f} MiB")
            if not args.keep:
                shutil.rmtree(work / f"out{i}", ignore_errors=True)
        base, two, small = results["1 worker"], results["2 workers"], results["1 worker, 1/4 of the rows"]
        print(f"2 workers / 1 worker: records/s {two['rate'] / base['rate']:.2f}x; peak tree RSS "
              f"{two['rss'] / base['rss']:.2f}x, PSS {two['pss'] / base['pss']:.2f}x; largest process "
              f"{two['largest'] / base['largest']:.2f}x")
        print(f"1 worker, full / quarter-size release ({args.rows / quarter_rows:.1f}x the rows): peak tree RSS "
              f"{base['rss'] / small['rss']:.2f}x, largest process {base['largest'] / small['largest']:.2f}x")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
