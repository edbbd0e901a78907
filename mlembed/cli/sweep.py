"""``mlembed sweep SWEEP.yaml --local``: a wandb sweep file run (or listed) here (see mlembed.sweep)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from mlembed.cli.errors import reported
from mlembed.sweep import build_command, expand, load_sweep, run_local


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(prog="mlembed sweep", description="A wandb sweep file run (or listed) here, without a "
                                "wandb server.")
    p.add_argument("sweep", help="sweep file (sweeps/*.yaml)")
    p.add_argument("--local", action="store_true",
                   help="run here, one subprocess per combination (with a server: wandb sweep FILE; wandb agent ID)")
    p.add_argument("--dry-run", action="store_true", help="list the commands, run nothing")
    p.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="grid: the first N combinations; random/bayes: N draws (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of random/bayes draws (0)")
    p.add_argument("--out", default=None, metavar="DIR", help="run directories and summary (runs/sweep-<name>)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="use this config instead of the command's --config (e.g. configs/tiny_bert.yaml)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], metavar="ARGS",
                   help="flags appended to every run (everything after --extra)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0 when every run succeeded, 1 when one failed, 2 on a bad sweep or usage."""
    return reported("sweep", lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.local:
        p.error("only --local runs here; with a wandb server: wandb sweep FILE, then wandb agent SWEEP_ID")
    if args.max_runs is not None and args.max_runs < 1:
        p.error(f"--max-runs ({args.max_runs}) must be at least 1")
    try:
        sweep = load_sweep(args.sweep)
    except yaml.YAMLError as err:
        raise ValueError(f"{args.sweep}: not valid YAML: {err}") from None
    combos = expand(sweep, args.max_runs, args.seed)
    out = Path(args.out or f"runs/sweep-{sweep.name}")
    if args.dry_run:
        for i, params in enumerate(combos):
            print(f"{i}: {shlex.join(build_command(sweep, params, out / str(i), args.config, args.extra))}")
        return 0
    rows = run_local(sweep, combos, out, args.config, args.extra)
    print(f"summary: {out / 'summary.md'}")
    return 0 if all(row["returncode"] == 0 for row in rows) else 1
