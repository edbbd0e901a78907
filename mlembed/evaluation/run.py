"""``python -m mlembed evaluate``: score a checkpoint or export on the tasks, at one point or the whole grid.

Examples::

    python -m mlembed evaluate --model runs/last.ckpt --data-dir data/demo --grid --budget-bytes 256
    python -m mlembed evaluate --model export/ --tasks lee sts:my_pairs.tsv --out eval/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlembed.evaluation.budget import best_within_budget, describe_pick
from mlembed.evaluation.grid import run_grid
from mlembed.evaluation.result import axis_order
from mlembed.evaluation.suite import DEFAULT_TASKS, EvalCaps, build_tasks


def parser() -> argparse.ArgumentParser:
    """The command-line flags (``python -m mlembed evaluate --help``)."""
    p = argparse.ArgumentParser(prog="mlembed evaluate", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="a Lightning checkpoint (.ckpt) or an `mlembed export` directory")
    p.add_argument("--grid", action="store_true", help="score every (rank, depth, dim) point, not only the full one")
    p.add_argument("--budget-params", type=int, help="print the best point with at most this many parameters")
    p.add_argument("--budget-bytes", type=int, help="print the best point with at most this many bytes per vector")
    p.add_argument("--bytes-per-float", type=int, default=4, choices=(1, 2, 4),
                   help="bytes of one stored vector component (4 fp32, 2 fp16, 1 int8)")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                   help="lee, bitext, dialogue, or KIND:PATH with KIND in sts, bitext, pairs, retrieval")
    p.add_argument("--data-dir", help="the demo's output directory (its eval/*.jsonl feed bitext and dialogue)")
    p.add_argument("--out", default="evaluation", help="directory for grid.csv, grid.md and the plots")
    p.add_argument("--ranks", nargs="+", type=int, help="ranks to score (default: the model's)")
    p.add_argument("--depths", nargs="+", type=int, help="depths to score (default: the model's)")
    p.add_argument("--dims", nargs="+", type=int, help="dims to score (default: the model's)")
    p.add_argument("--max-pairs-per-language", type=int, default=EvalCaps.max_pairs_per_language,
                   help="cap on bitext pairs per language (0: no cap)")
    p.add_argument("--max-queries-per-language", type=int, default=EvalCaps.max_queries_per_language,
                   help="cap on pair-retrieval (dialogue) queries per language (0: no cap)")
    p.add_argument("--max-languages", type=int, default=EvalCaps.max_languages, help="cap on languages (0: no cap)")
    p.add_argument("--languages", nargs="+", help="only these languages")
    p.add_argument("--max-sts-pairs", type=int, default=0, help="cap on STS pairs (0: no cap)")
    p.add_argument("--seed", type=int, default=0, help="seed of the capped samples")
    p.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    p.add_argument("--no-instructions", action="store_true", help="no instruction before dialogue queries")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:1...)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; 0 on success, 1 when a budget was given and no point fits it."""
    args = parser().parse_args(argv)
    import mlembed  # mlembed.load imports the model code on first use

    caps = EvalCaps(
        max_pairs_per_language=args.max_pairs_per_language or None,
        max_queries_per_language=args.max_queries_per_language or None,
        max_languages=args.max_languages or None,
        languages=tuple(args.languages) if args.languages else None,
        max_sts_pairs=args.max_sts_pairs or None,
        seed=args.seed,
    )
    tasks = build_tasks(args.tasks, data_dir=args.data_dir, caps=caps, batch_size=args.batch_size,
                        instructions=not args.no_instructions)
    encoder = mlembed.load(args.model, device=args.device)
    budget = args.budget_params is not None or args.budget_bytes is not None
    axes = _axes(encoder, args, whole_grid=args.grid or budget)
    result = run_grid(encoder, tasks, args.out, plots=not args.no_plots, bytes_per_float=args.bytes_per_float, **axes)
    print(result.to_markdown())
    print(f"{len(result.points())} points in {result.seconds:.1f} s; files in {Path(args.out).resolve()}")
    if not budget:
        return 0
    pick = best_within_budget(result.points(), budget_params=args.budget_params, budget_bytes=args.budget_bytes)
    print(describe_pick(pick, budget_params=args.budget_params, budget_bytes=args.budget_bytes))
    return 0 if pick is not None else 1


def _axes(encoder, args: argparse.Namespace, *, whole_grid: bool) -> dict[str, list]:
    """The ranks, depths and dims to score: the flags, else the model's (only the largest without --grid)."""
    points = encoder.points()
    axes = {}
    for name in ("ranks", "depths", "dims"):
        values = getattr(args, name) or list(getattr(points, name))
        axes[name] = values if whole_grid else [max(values, key=axis_order)]
    return axes


if __name__ == "__main__":
    sys.exit(main())
