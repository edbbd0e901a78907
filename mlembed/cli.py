"""The command line: ``python -m mlembed fit|validate|test|predict`` (LightningCLI) and the tool subcommands.

``shards``, ``export``, ``evaluate`` and ``sweep`` are plain argparse programs in their own modules; the
Lightning subcommands get argument links so the tokenizer and the sequence length are said once (on the model).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import jsonargparse
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from mlembed.module import EmbeddingModule

#: Subcommands that are not Lightning's, as ``module:function`` taking argv and returning an exit code.
TOOLS = {
    "shards": "mlembed.data.shards_cli:main",
    "export": "mlembed.export:main",
    "evaluate": "mlembed.evaluation.run:main",
    "sweep": "mlembed.sweep:main",
}


class MLEmbedCLI(LightningCLI):
    """LightningCLI with mlembed's links: the data pipeline tokenizes with the model's tokenizer."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.text_tokenizer", "data.init_args.tokenizer", apply_on="instantiate")

    def before_fit(self) -> None:
        # The data knows how many batches its stages hold; without an explicit max_steps, train exactly those.
        total = getattr(self.datamodule, "total_steps", None)
        if total and self.trainer.max_steps == -1:
            # fit_loop.max_steps is read-only in Lightning 2.6; the epoch loop owns the value.
            self.trainer.fit_loop.epoch_loop.max_steps = max(1, total // self.trainer.accumulate_grad_batches)

    def before_instantiate_classes(self) -> None:
        # Presets stacked with several --config files append callbacks; the same one twice is dropped.
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        callbacks = config.get("trainer", {}).get("callbacks")
        if isinstance(callbacks, list):
            config["trainer"]["callbacks"] = unique_callbacks(callbacks)


def unique_callbacks(callbacks: list) -> list:
    """``callbacks`` without repeats of the same class with the same arguments (first one kept)."""
    seen, kept = set(), []
    for callback in callbacks:
        key = repr(callback)
        if key not in seen:
            seen.add(key)
            kept.append(callback)
    return kept


def lightning_main(args: list[str] | None = None, run: bool = True) -> MLEmbedCLI:
    """Run LightningCLI on ``args`` (``sys.argv`` when None)."""
    # The docstring under each settings field becomes its --help text.
    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return MLEmbedCLI(
        EmbeddingModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def _tool(name: str) -> Callable[[list[str]], int]:
    module, _, function = TOOLS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mlembed`` and the ``mlembed`` script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in TOOLS:
        return int(_tool(args[0])(args[1:]) or 0)
    # None lets LightningCLI read sys.argv itself (it warns when given both).
    lightning_main(None if argv is None else args)
    return 0
