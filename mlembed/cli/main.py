"""The root of ``mlembed`` (the console script) and ``python -m mlembed``: every subcommand, one line each.

A subcommand is one entry of ``COMMANDS``: the module whose ``main(argv) -> int`` runs it (argv without the
command's name) and the line ``mlembed --help`` shows. Lightning's four run through LightningCLI with the
command's name kept, as LightningCLI expects.
"""

from __future__ import annotations

import importlib
import sys

from mlembed.cli.errors import reported
from mlembed.cli.teardown import release_process_group

COMMANDS = {
    "fit": ("mlembed.cli.train", "train a model (LightningCLI: --config FILE, --trainer.*, --model.*, --data.*)"),
    "validate": ("mlembed.cli.train", "the validation loss of a model on held-out shards"),
    "test": ("mlembed.cli.train", "the loss per source on held-out shards"),
    "predict": ("mlembed.cli.train", "the embeddings of the held-out queries"),
    "mine": ("mlembed.cli.mine", "hard negatives for (query, positive) records, in bounded memory"),
    "shards": ("mlembed.cli.shards", "records, the released data or the demo -> webdataset shards + manifest"),
    "export": ("mlembed.cli.export", "a checkpoint at a (rank, depth, dim) point -> a model directory"),
    "evaluate": ("mlembed.cli.evaluate", "score the (rank x depth x dim) grid, or one point with mteb"),
    "sweep": ("mlembed.cli.sweep", "run a wandb sweep file here, without a wandb server"),
}
"""Subcommand -> (module with ``main(argv) -> int``, its line in ``mlembed --help``)."""
LIGHTNING = ("fit", "validate", "test", "predict")


def usage() -> str:
    """The root help: what mlembed is and every subcommand."""
    width = max(map(len, COMMANDS))
    lines = ["usage: mlembed COMMAND [options]     (or: python -m mlembed COMMAND [options])", "",
             "Train, export and evaluate multilingual embedding models with 3D Matryoshka Learning.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items()]
    lines += ["", "mlembed COMMAND --help shows a command's options. Errors are one line and exit code 2; "
              "MLEMBED_TRACEBACK=1 shows the traceback."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``mlembed ARGV``; returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command = args[0]
    if command not in COMMANDS:
        print(f"mlembed: error: unknown command {command!r}; the commands are {', '.join(COMMANDS)} "
              "(mlembed --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    if command in LIGHTNING:
        # None lets LightningCLI read sys.argv itself (it warns when given both).
        code = reported(command, lambda: module.main(None if argv is None else args))
    else:
        code = module.main(args[1:])
    if code == 0:
        release_process_group()
    return code
