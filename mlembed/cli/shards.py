"""``mlembed shards``: JSONL / parquet records -> webdataset shards + manifest, or the demo data.

``--format f2llm`` reads the released ML-Embed / F2LLM-v2 data as it is (one parquet file per source; see
``mlembed.data.f2llm``), one source per worker process with ``--workers N``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlembed.batch import TASKS
from mlembed.cli.errors import reported
from mlembed.data.shards import summary, write_shards

FORMATS = ("records", "f2llm")
"""Input formats of ``--format``."""


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="mlembed shards",
        description="Write webdataset shards (one source per shard) and manifest.json from JSONL/parquet "
        "records {id?, query, positive, negatives, instruction?, source, task}, or (--format f2llm) from the "
        "released ML-Embed / F2LLM-v2 data: one parquet file per source, named after it, with columns query, "
        "passage, negative_1..negative_24.",
    )
    p.add_argument("--input", nargs="+", metavar="FILE", help="input .jsonl or .parquet files")
    p.add_argument("--format", choices=FORMATS, default="records",
                   help="records: rows that name their source and task (default); f2llm: one parquet file per "
                   "source (source = file stem, task from the reference's lists)")
    p.add_argument("--output", metavar="DIR", help="output directory (must be empty unless --overwrite)")
    p.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="samples per shard (10000)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip bad records (counted in the manifest and summary) instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace shards and manifest of an earlier run")
    f2llm = p.add_argument_group("--format f2llm")
    f2llm.add_argument("--task-of", action="append", default=[], metavar="SOURCE=TASK",
                       help="the task of a source (repeatable); wins over --task-map and the reference's lists")
    f2llm.add_argument("--task-map", metavar="FILE.yaml", help="a YAML file of source: task lines")
    f2llm.add_argument("--only-task", action="append", choices=TASKS, metavar="TASK",
                       help="write only the sources of this task (repeatable); the others are listed, not written")
    f2llm.add_argument("--columns", metavar="FIELD=COLUMN,...",
                       help="another layout of one file per source: e.g. query=anchor,positive=pos,negatives=neg_* "
                       "(negatives: a glob or one list column; also id=COL, instruction=COL); default "
                       "query=query,positive=passage,negatives=negative_*")
    f2llm.add_argument("--workers", type=int, default=1, metavar="N",
                       help="write N sources at a time, each in its own process (1)")
    f2llm.add_argument("--max-per-source", type=int, metavar="N",
                       help="keep a seeded random sample of at most N rows of each source (the authors: 80000)")
    f2llm.add_argument("--seed", type=int, default=None, metavar="S",
                       help="seed of --max-per-source and --val-fraction (default 42, the authors'); recorded in the "
                       "manifest")
    f2llm.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                       help="hold out a seeded share F of each source's rows as validation shards under OUTPUT/val "
                       "(the authors: 0.01); fit validates on them per source without a val_shards setting")
    p.add_argument("--demo", metavar="OUTDIR",
                   help="build the demo data (Django translations, chatterbot dialogues) into OUTDIR instead")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 2 a user's mistake: one line naming the file or flag)."""
    return reported("shards", lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.demo:
        from mlembed.demo.data import build_demo

        print(build_demo(args.demo, overwrite=args.overwrite).summary())
        return 0
    if not args.input or not args.output:
        p.error("--input and --output are required (or --demo OUTDIR)")
    if args.format != "f2llm":
        given = [flag for flag, value in (("--task-of", args.task_of), ("--task-map", args.task_map),
                                          ("--only-task", args.only_task), ("--columns", args.columns),
                                          ("--workers", args.workers != 1),
                                          ("--max-per-source", args.max_per_source is not None),
                                          ("--seed", args.seed is not None),
                                          ("--val-fraction", args.val_fraction)) if value]
        if given:
            p.error(f"{', '.join(given)} need --format f2llm")
    folders = [path for path in args.input if Path(path).is_dir()]
    if folders:
        raise ValueError(f"--input {folders[0]} is a directory: give its files (e.g. {folders[0]}/*.jsonl)")
    if args.format == "f2llm":
        manifest = _f2llm(args)
    else:
        manifest = write_shards(args.input, args.output, shard_size=args.shard_size,
                                skip_invalid=args.skip_invalid, overwrite=args.overwrite)
    print(summary(manifest))
    return 0


def _f2llm(args):
    from mlembed.data.f2llm import plan_sources
    from mlembed.data.shards import Sampling, write_sources

    seed = 42 if args.seed is None else args.seed
    sampling = Sampling(args.max_per_source, seed, args.val_fraction)  # checked before any file is read
    jobs, left_out = plan_sources(args.input, args.columns, args.task_of, args.task_map, args.only_task)
    if left_out:
        print(f"left out (--only-task {' '.join(args.only_task)}): "
              + ", ".join(f"{job.source} ({job.task})" for job in left_out), file=sys.stderr)
    return write_sources(jobs, args.output, shard_size=args.shard_size, skip_invalid=args.skip_invalid,
                         overwrite=args.overwrite, workers=args.workers, sampling=sampling)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
