"""``mlembed mine``: hard negatives for (query, positive) records, ready for ``mlembed shards`` (see mlembed.mining)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mlembed.cli.errors import reported
from mlembed.cli.quiet import quiet
from mlembed.mining import (
    SAMPLING,
    MineSettings,
    PointEncoder,
    SearchSettings,
    check_paths,
    check_window,
    load_text_encoder,
    mine,
    model_identity,
    read_pairs,
)


def parser() -> argparse.ArgumentParser:
    """The ``mlembed mine`` argument parser."""
    defaults, blocks = MineSettings(), SearchSettings()
    parser = argparse.ArgumentParser(
        prog="mlembed mine",
        description="Add hard negatives to (query, positive) records: the corpus (every positive, plus --corpus) is "
                    "embedded to disk and searched in blocks (memory does not grow with corpus x queries), then "
                    "filtered as sentence-transformers' mine_hard_negatives does. Killed and run again with the same "
                    "flags, it resumes.")
    parser.add_argument("--model", required=True,
                        help="an mlembed checkpoint or export, or any sentence-transformers model (path, hub id, or "
                        "pkg://package/path inside an installed package)")
    parser.add_argument("--input", required=True, nargs="+", help="JSONL or parquet records with query and positive "
                        "(source and instruction used when present; every field is kept)")
    parser.add_argument("--output", required=True, help="directory of the mined records (one JSONL file per input)")
    parser.add_argument("--corpus", nargs="*", default=[], help="more passages: text files (one a line), or JSONL / "
                        "parquet with text (and source)")
    parser.add_argument("--num-negatives", type=int, default=defaults.num_negatives, help="negatives per query")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of --sampling random")
    parser.add_argument("--range-min", type=int, default=defaults.range_min,
                        help="skip this many of the best remaining candidates")
    parser.add_argument("--range-max", type=int, default=None, help="the candidate window per query (default: "
                        "range-min + num-negatives, x10 when a margin or score limit is set)")
    parser.add_argument("--max-score", type=float, default=None, help="drop candidates scoring above this")
    parser.add_argument("--min-score", type=float, default=None, help="drop candidates scoring below this")
    parser.add_argument("--absolute-margin", type=float, default=None,
                        help="drop candidates with score + margin > the positive's score")
    parser.add_argument("--relative-margin", type=float, default=None,
                        help="drop candidates with score > positive - |positive| x margin (0.05: TopK-PercPos 95%%)")
    parser.add_argument("--sampling", choices=SAMPLING, default=defaults.sampling,
                        help="top: the best remaining candidates; random: a seeded draw among them")
    parser.add_argument("--across-sources", action="store_true",
                        help="candidates from every source (default: the query's own source only)")
    parser.add_argument("--point", default=None, help="RANK,DEPTH,DIM of an mlembed model to retrieve at (full for "
                        "the model's own value); candidates are then rescored at the full point")
    parser.add_argument("--filter-model", default=None, help="a second model that rescores the window (the "
                        "false-negative filter): its scores order and filter the candidates")
    parser.add_argument("--batch-size", type=int, default=blocks.batch_size, help="texts per forward pass")
    parser.add_argument("--query-block", type=int, default=blocks.query_block, help="queries scored together")
    parser.add_argument("--corpus-block", type=int, default=blocks.corpus_block,
                        help="corpus rows scored at a time (memory: query-block x corpus-block floats)")
    parser.add_argument("--faiss", action="store_true",
                        help="search with a faiss flat index (pip install faiss-cpu) instead of torch")
    parser.add_argument("--chunk", type=int, default=blocks.chunk,
                        help="texts embedded between two saves of the progress (what a killed run re-embeds)")
    parser.add_argument("--device", default="cpu", help="where the models run (cpu, cuda)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished mine in --output")
    return parser


def parse_point(text: str | None) -> tuple[int | None, int | None, int | None] | None:
    """``64,2,128`` -> (64, 2, 128); ``full`` (or ``-``) leaves a value at the model's own."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--point {text!r} must be RANK,DEPTH,DIM (full for the model's own value)")
    try:
        return tuple(None if p in ("full", "-", "") else int(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"--point {text!r} must be RANK,DEPTH,DIM of integers (or full)") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mlembed mine``; returns the exit status (2: a user's mistake, printed as one line)."""
    return reported("mine", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    settings = MineSettings(num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
                            max_score=args.max_score, min_score=args.min_score,
                            absolute_margin=args.absolute_margin, relative_margin=args.relative_margin,
                            sampling=args.sampling, per_source=not args.across_sources, seed=args.seed)
    settings.check()  # before any model is loaded
    search = SearchSettings(batch_size=args.batch_size, chunk=args.chunk, query_block=args.query_block,
                            corpus_block=args.corpus_block, faiss=args.faiss)
    for name in ("batch_size", "chunk", "query_block", "corpus_block"):
        if getattr(search, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} ({getattr(search, name)}) must be at least 1")
    point = parse_point(args.point)
    if point is not None and all(value is None for value in point):
        point = None  # the full point: nothing to rescore
    check_paths([Path(p) for p in args.input], [Path(p) for p in args.corpus], Path(args.output))
    pairs = read_pairs(args.input, args.corpus, per_source=settings.per_source)  # bad input before any model loads
    check_window(settings, pairs)
    quiet()
    encoder, embedder = load_text_encoder(args.model, point=point, device=args.device, batch_size=args.batch_size)
    rescorer = None
    if args.filter_model:
        rescorer, _ = load_text_encoder(args.filter_model, device=args.device, batch_size=args.batch_size,
                                        flag="--filter-model")
    elif point is not None:
        rescorer = PointEncoder(embedder, (None, None, None), args.batch_size)  # the same weights, the full point
    identity = model_identity(args.model, point=point, device=args.device)
    rescorer_identity = (model_identity(args.filter_model, device=args.device) if args.filter_model
                         else {**identity, "point": None})
    summary = mine(encoder, args.input, args.output, corpus_files=args.corpus, settings=settings, search=search,
                   rescorer=rescorer, overwrite=args.overwrite, identity=identity, rescorer_identity=rescorer_identity,
                   pairs=pairs,
                   log=lambda line: print(line, file=sys.stderr))
    skipped = {k: v for k, v in summary["skipped"].items() if v and k not in ("candidates", "short")}
    print(f"mined {summary['negatives']:,} negatives for {summary['records']:,} records ({summary['queries']:,} "
          f"queries, {summary['passages']:,} passages) into {args.output}")
    positive, negative = summary["scores"]["positive"], summary["scores"]["negative"]
    if negative.get("count"):
        print(f"scores: positive mean {positive['mean']:.4f}, negative mean {negative['mean']:.4f}")
    if skipped:
        print("skipped: " + ", ".join(f"{v:,} by {k.replace('_', ' ')}" for k, v in skipped.items()))
    if summary["skipped"]["short"]:
        print(f"{summary['skipped']['short']:,} queries got fewer than {settings.num_negatives} negatives "
              "(widen --range-max or loosen the filters)")
    return 0
