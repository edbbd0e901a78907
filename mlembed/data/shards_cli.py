"""``python -m mlembed shards``: JSONL / parquet records -> webdataset shards + manifest, or the demo data."""

from __future__ import annotations

import argparse
import sys

from mlembed.data.records import RecordError
from mlembed.data.shards import summary, write_shards


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m mlembed shards",
        description="Write webdataset shards (one source per shard) and manifest.json from JSONL/parquet "
        "records {id?, query, positive, negatives, instruction?, source, task}.",
    )
    p.add_argument("--input", nargs="+", metavar="FILE", help="input .jsonl or .parquet files")
    p.add_argument("--output", metavar="DIR", help="output directory (must be empty unless --overwrite)")
    p.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="samples per shard (10000)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip bad records (counted in the manifest and summary) instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace shards and manifest of an earlier run")
    p.add_argument("--demo", metavar="OUTDIR",
                   help="build the demo data (Django translations, chatterbot dialogues) into OUTDIR instead")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 bad input, 2 usage error)."""
    p = parser()
    args = p.parse_args(argv)
    if args.demo:
        from mlembed.data.demo import build_demo

        print(build_demo(args.demo, overwrite=args.overwrite).summary())
        return 0
    if not args.input or not args.output:
        p.error("--input and --output are required (or --demo OUTDIR)")
    try:
        manifest = write_shards(args.input, args.output, shard_size=args.shard_size,
                                skip_invalid=args.skip_invalid, overwrite=args.overwrite)
    except (RecordError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary(manifest))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
