"""``mlembed evaluate``: score a checkpoint or export on the tasks, at one point or the whole grid.

Examples::

    mlembed evaluate --model runs/last.ckpt --data-dir data/demo --grid --budget-bytes 256
    mlembed evaluate --model export/ --tasks lee sts:my_pairs.tsv --out eval/
    mlembed evaluate --model export/ --mteb STS12 NFCorpus --rank 128 --depth 14 --dim 256 --out mteb/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlembed.artifact import warn_untrained
from mlembed.cli.errors import reported
from mlembed.demo.tasks import DATA_DIR_TASKS, DEMO_TASKS, build_tasks
from mlembed.evaluation.budget import best_within_budget, describe_pick
from mlembed.evaluation.grid import evaluate_grid
from mlembed.evaluation.result import axis_order
from mlembed.evaluation.spread import SpreadEncoder, torch_distributed_group
from mlembed.evaluation.suite import EvalCaps
from mlembed.paths import check_output
from mlembed.reporting.report import run_grid


def parser() -> argparse.ArgumentParser:
    """The command-line flags (``mlembed evaluate --help``)."""
    p = argparse.ArgumentParser(prog="mlembed evaluate", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="a Lightning checkpoint (.ckpt) or an `mlembed export` directory")
    p.add_argument("--grid", action="store_true", help="score every (rank, depth, dim) point, not only the full one")
    p.add_argument("--budget-params", type=int, help="print the best point with at most this many parameters")
    p.add_argument("--budget-bytes", type=int, help="print the best point with at most this many bytes per vector")
    p.add_argument("--bytes-per-float", type=int, default=4, choices=(1, 2, 4),
                   help="bytes of one stored vector component (4 fp32, 2 fp16, 1 int8)")
    p.add_argument("--tasks", nargs="+",
                   help=f"the demo's tasks ({', '.join(DEMO_TASKS)}; {' and '.join(DATA_DIR_TASKS)} read --data-dir), or "
                        "KIND:PATH with KIND in sts, bitext, pairs, retrieval. Default: every demo task whose data is "
                        "at hand (all of them with --data-dir)")
    p.add_argument("--data-dir", help="the demo's output directory (its eval/*.jsonl feed bitext and dialogue)")
    p.add_argument("--out", help="directory for grid.csv, grid.md and the plots (with --mteb: mteb's results). "
                                 "Default: a new folder evaluation/<date>-<time> for each run, so no run overwrites "
                                 "another. An existing non-empty --out is refused unless --overwrite is given and it "
                                 "holds an earlier evaluation (grid.csv); --mteb adds its results to a folder that "
                                 "holds mteb's results/")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier evaluation in --out (any other non-empty folder is refused)")
    p.add_argument("--ranks", nargs="+", type=int, help="ranks to score (default: the model's)")
    p.add_argument("--svd-ranks", nargs="+", type=int, metavar="K",
                   help="score a model without MEL factors (trained with MEL off, or a compat export) at these "
                        "ranks, each the direct SVD truncation of its embedding matrix: the baseline of a MEL "
                        "ablation (the full rank is scored too; with --mteb, --rank picks one of them)")
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
    mteb = p.add_argument_group("MTEB", "score one point on tasks of the installed mteb package (its data comes "
                                        "from the Hugging Face hub); results go under OUT/results as mteb writes them")
    mteb.add_argument("--mteb", nargs="+", metavar="TASK", help="mteb task names (STS12, NFCorpus, ...)")
    mteb.add_argument("--rank", type=int, help="MEL rank of the point (default: the model's)")
    mteb.add_argument("--depth", type=int, help="depth of the point (default: the model's)")
    mteb.add_argument("--dim", type=int, help="embedding size of the point (default: the model's)")
    mteb.add_argument("--instructions", help="YAML or JSON file of task name -> instruction (before queries and "
                                             "symmetric texts, never before documents)")
    mteb.add_argument("--instruction", help="instruction of the tasks not in --instructions")
    mteb.add_argument("--name", help="ORG/NAME of the model in mteb's results (default: mlembed/<model file name>)")
    return p


def main(argv: list[str] | None = None, local_tasks: Sequence[Any] = ()) -> int:
    """Run the evaluation; 0 on success, 1 when a budget was given and no point fits it, 2 on a user's mistake.

    Args:
        argv: the flags (``sys.argv[1:]`` when None).
        local_tasks: mteb task objects that ``--mteb`` may name besides mteb's own (tasks built from local data).
    """
    return reported("evaluate", lambda: _run(argv, local_tasks))


def _run(argv: list[str] | None, local_tasks: Sequence[Any]) -> int:
    args = parser().parse_args(argv)
    if args.tasks is None:
        args.tasks = [t for t in DEMO_TASKS if args.data_dir or t not in DATA_DIR_TASKS]
    args.out = str(output_dir(args.out, args.overwrite, mteb=bool(args.mteb)))
    point_flags = [f"--{axis}" for axis in ("rank", "depth", "dim") if getattr(args, axis) is not None]
    if args.mteb:
        if args.grid or args.budget_params is not None or args.budget_bytes is not None:
            return _error("--mteb scores one point: drop --grid/--budget-*, choose it with --rank/--depth/--dim")
        if args.svd_ranks and args.rank not in args.svd_ranks:
            return _error(f"--mteb scores one point: --rank ({args.rank}) must be one of --svd-ranks "
                          f"({' '.join(map(str, args.svd_ranks))})")
        return evaluate_mteb(args, local_tasks)
    if point_flags:
        return _error(f"{'/'.join(point_flags)} choose the point of --mteb; the grid takes --ranks/--depths/--dims")
    if args.svd_ranks and args.ranks:
        return _error("--svd-ranks already names the ranks to score: drop --ranks")
    if args.svd_ranks and not (args.grid or args.budget_params is not None or args.budget_bytes is not None):
        return _error("--svd-ranks scores several ranks: add --grid (without it only the full point is scored)")
    import mlembed  # mlembed.load imports the model code on first use

    _check_model(args.model)  # before the tasks: a wrong --model is what to hear about, not a task's data
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
    group = torch_distributed_group(args.device)  # under torchrun: every process embeds a share of the texts
    device = args.device if group is None else group[3]
    encoder = mlembed.load(args.model, device=device, svd_ranks=args.svd_ranks)
    if args.ranks and getattr(encoder, "dense", False) and set(args.ranks) != {encoder.rank}:
        return _error(f"--ranks {' '.join(map(str, args.ranks))}: {args.model} has no MEL factors (trained with MEL "
                      f"off, or a compat export): --svd-ranks {' '.join(map(str, args.ranks))} scores the direct "
                      "SVD truncation of its embedding matrix at those ranks")
    budget = args.budget_params is not None or args.budget_bytes is not None
    axes = _axes(encoder, args, whole_grid=args.grid or budget)
    if group is not None:
        world, index, all_gather, _ = group
        encoder = SpreadEncoder(encoder, world_size=world, process_index=index, all_gather=all_gather, device=device)
        if index != 0:  # the same calls as process 0, which alone writes and prints
            evaluate_grid(encoder, tasks, progress=False, bytes_per_float=args.bytes_per_float, **axes)
            return 0
    result = run_grid(encoder, tasks, args.out, plots=not args.no_plots, bytes_per_float=args.bytes_per_float, **axes)
    print(result.to_markdown())
    print(f"{len(result.points())} points in {result.seconds:.1f} s; files in {Path(args.out).resolve()}")
    if not budget:
        return 0
    pick = best_within_budget(result.points(), budget_params=args.budget_params, budget_bytes=args.budget_bytes)
    print(describe_pick(pick, budget_params=args.budget_params, budget_bytes=args.budget_bytes))
    return 0 if pick is not None else 1


RUNS = Path("evaluation")
"""Where an evaluation without ``--out`` goes: a new folder per run inside it."""


def output_dir(out: str | None, overwrite: bool, mteb: bool = False) -> Path:
    """The folder this run writes into: ``out`` once checked, else a new ``evaluation/<date>-<time>[-N]``.

    With ``mteb``, a folder that holds mteb's ``results/`` is taken as it is: mteb's result cache adds this run's
    files beside the earlier ones (other points, other models) and deletes nothing.
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder, n = RUNS / stamp, 1
        while folder.exists():
            folder, n = RUNS / f"{stamp}-{n}", n + 1
        return folder
    if mteb and (Path(out) / "results").is_dir():
        return Path(out)
    check_output(Path(out), "--out", overwrite, owned=_is_evaluation, what="evaluation (grid.csv, or mteb's results/)")
    return Path(out)


def _is_evaluation(directory: Path) -> bool:
    return (directory / "grid.csv").is_file() or (directory / "results").is_dir()


def evaluate_mteb(args: argparse.Namespace, local_tasks: Sequence[Any] = ()) -> int:
    """Score the point (--rank, --depth, --dim) of --model on the --mteb tasks with mteb's own evaluation."""
    try:
        import mteb
    except ImportError:
        return _error("--mteb needs the mteb package: pip install mteb")

    tasks = resolve_mteb_tasks(args.mteb, local_tasks)
    if isinstance(tasks, str):
        return _error(tasks)
    _check_model(args.model)
    import mlembed
    from mlembed.integrations.mteb import MTEBEncoder

    instructions = _read_mapping(args.instructions) if args.instructions else {}
    encoder = mlembed.load(args.model, rank=args.rank, depth=args.depth, dim=args.dim, device=args.device,
                           svd_ranks=args.svd_ranks)
    model = MTEBEncoder(encoder, instructions=instructions, default_instruction=args.instruction,
                        batch_size=args.batch_size, name=args.name or f"mlembed/{Path(args.model).resolve().name}",
                        revision=model_revision(args.model))
    cache = mteb.ResultCache(cache_path=args.out)
    results = mteb.evaluate(model, tasks, cache=cache, encode_kwargs={"batch_size": args.batch_size},
                            show_progress_bar=False)
    point = model.point()
    print(f"mteb {mteb.__version__}, {model.name} (revision {model.revision}) at rank={point['rank']} "
          f"depth={point['depth']} dim={point['dim']}")
    for result in results.task_results:
        task = next(t for t in tasks if t.metadata.name == result.task_name)
        print(f"{result.task_name}: {task.metadata.main_score} = {result.get_score():.4f}  "
              f"({cache.get_task_result_path(result.task_name, model.mteb_model_meta)})")
    return 0


def resolve_mteb_tasks(names: Sequence[str], local_tasks: Sequence[Any] = ()) -> list[Any] | str:
    """The mteb task objects named (``local_tasks`` first, then mteb's registry), or the error line."""
    import mteb

    local = {task.metadata.name: task for task in local_tasks}
    tasks = []
    for name in names:
        if name in local:
            tasks.append(local[name])
            continue
        try:
            tasks.append(mteb.get_task(name))
        except KeyError as err:
            hint = re.search(r"Did you mean: '([^']+)'", str(err))
            return (f"--mteb: mteb {mteb.__version__} has no task {name!r}"
                    + (f" (did you mean {hint[1]!r}?)" if hint else ""))
    return tasks


def model_revision(path: str | Path) -> str:
    """A short hash of the model's files (path, size, modification time): mteb reuses results per revision."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _read_mapping(path: str) -> dict[str, str]:
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if Path(path).suffix != ".json" else \
        json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"--instructions {path}: expected lines 'TaskName: instruction'")
    return {str(k): v for k, v in data.items()}


def _check_model(model: str) -> None:
    if not Path(model).exists():
        raise FileNotFoundError(f"--model {model} does not exist (a .ckpt file, a sharded checkpoint directory or an "
                                "`mlembed export` directory)")


def _error(message: str) -> int:
    print(f"mlembed evaluate: error: {message}", file=sys.stderr)
    return 2


def _axes(encoder, args: argparse.Namespace, *, whole_grid: bool) -> dict[str, list]:
    """The ranks, depths and dims to score: the flags, else the model's (only the largest without --grid).

    Each value of a flag must lie in the loaded model's range (a dim wider than the model would be scored at
    full width under its label); one in range that was never trained gets one warning naming the trained ones.
    """
    points = encoder.points()
    # An mlembed.load Embedder knows its own point; another PointEncoder is range-checked as it embeds.
    limits = {name: getattr(encoder, name[:-1], None) for name in ("ranks", "depths", "dims")}
    axes = {}
    for name in ("ranks", "depths", "dims"):
        given = getattr(args, name) or []
        limit = limits[name]
        for value in given:
            if limit is not None and not 1 <= value <= limit:
                raise ValueError(f"--{name} {value} is outside [1, {limit}] (the {_AXIS_WHAT[name]} of {args.model})")
            warn_untrained(points, flag=lambda axis: f"--{axis}s", **{name[:-1]: value})
        values = given or list(getattr(points, name))
        axes[name] = values if whole_grid else [max(values, key=axis_order)]
    return axes


_AXIS_WHAT = {"ranks": "MEL rank", "depths": "number of layers", "dims": "embedding size"}


if __name__ == "__main__":
    sys.exit(main())
