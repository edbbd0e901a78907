"""``mlembed export``: a checkpoint at one (rank, depth, dim) point -> a model directory (see mlembed.export)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mlembed.artifact import MODES, ExportManifest
from mlembed.cli.errors import reported
from mlembed.export import directory_bytes, export


def parser() -> argparse.ArgumentParser:
    """The ``mlembed export`` argument parser."""
    parser = argparse.ArgumentParser(prog="mlembed export",
                                     description="Export a trained model at one (rank, depth, dim) point of its 3D "
                                                 "Matryoshka grid.")
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of an EmbeddingModule")
    parser.add_argument("--out", required=True, help="export directory (must not exist or be empty)")
    parser.add_argument("--mode", choices=MODES, default="compat",
                        help="compat: dense Hugging Face + sentence-transformers dir; efficiency: MEL factors")
    parser.add_argument("--rank", type=int, default=None, help="MEL rank k (default: the trained maximum)")
    parser.add_argument("--depth", type=int, default=None, help="layers kept (default: all)")
    parser.add_argument("--dim", type=int, default=None, help="embedding size D (default: the hidden size)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --out (any other non-empty folder is refused)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mlembed export``; returns the exit status (2: a user's mistake, printed as one line)."""
    return reported("export", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    out = export(args.ckpt, args.out, mode=args.mode, rank=args.rank, depth=args.depth, dim=args.dim,
                 overwrite=args.overwrite)
    manifest = ExportManifest.read(out)
    print(f"exported {args.mode} model (rank={manifest.rank}, depth={manifest.depth}, dim={manifest.dim}) to {out} "
          f"({directory_bytes(out) / 2**20:.1f} MiB)")
    return 0
