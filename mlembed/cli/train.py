"""``mlembed fit|validate|test|predict``: LightningCLI with mlembed's links, resume checks and run-length rules."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import jsonargparse
import yaml
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from mlembed import sharded
from mlembed.callbacks.progress import ModelSize, Progress
from mlembed.callbacks.run_log import RunLog, continue_log
from mlembed.cli.quiet import quiet
from mlembed.cli.resume import (
    ALLOW_CHANGE,
    SPECIAL_CKPT_PATHS,
    check_axes,
    check_objective,
    read_checkpoint,
    read_hyperparameters,
)
from mlembed.module import EmbeddingModule
from mlembed.wandb_config import WandbSaveConfig

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
"""The subcommands LightningCLI runs."""


def _tokenizer_of(model):
    """The tokenizer the data pipeline must use: the encoder's own (one tokenization for training and serving)."""
    return model.encoder.text_tokenizer


def _template_of(model):
    """The instruction template the data must use: the one the trained model serves with."""
    return model.encoder.instruction_template


class MLEmbedCLI(LightningCLI):
    """LightningCLI with mlembed's links: the data pipeline tokenizes with the model's tokenizer and puts
    instructions before queries with the model's template."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model", "data.init_args.tokenizer", compute_fn=_tokenizer_of, apply_on="instantiate")
        parser.link_arguments("model", "data.init_args.instruction_template", compute_fn=_template_of,
                              apply_on="instantiate")
        parser.add_argument(f"--{ALLOW_CHANGE}", type=bool, default=False,
                            help="Resume --ckpt_path although the loss settings (MRL dims and weights, MLL layers, "
                                 "MEL ranks, loss, negatives, instructions) differ from the checkpoint's.")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with mlembed's defaults where the config leaves Lightning to choose: a CSV logger in
        ``default_root_dir`` (Lightning's own choice when tensorboard is missing, without its notice about it), the
        stage-and-step progress and the one-line model size (mlembed.callbacks.progress)."""
        config = self._get(self.config_init, "trainer", default={})
        chosen = list(config.get("callbacks") or []) + [
            self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        defaults = []
        if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in chosen):
            defaults.append(Progress())
        if config.get("enable_model_summary", True) is not False and not any(
                isinstance(c, ModelSummary) for c in chosen):
            defaults.append(ModelSize())
            kwargs["enable_model_summary"] = False  # Lightning's own table; ModelSize runs as a callback
        if defaults:
            kwargs["callbacks"] = list(config.get("callbacks") or []) + defaults
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            root = config.get("default_root_dir")
            kwargs["logger"] = CSVLogger(save_dir=os.fspath(root) if root else os.getcwd())
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        self.trainer.callbacks.append(RunLog())
        path = self._checkpoint_file()
        if path is not None:
            checkpoint = read_checkpoint(path)
            for metrics in continue_log(self.trainer, checkpoint):
                print(f"mlembed: resuming at step {checkpoint.get('global_step', 0)} of {path}; the metrics "
                      f"continue in {metrics}")
        # The data knows how many batches its stages hold; without an explicit max_steps, train exactly those.
        steps_for = getattr(self.datamodule, "steps_for", None)
        total = steps_for(self.trainer.world_size) if steps_for is not None else None
        if total and self.trainer.is_global_zero:
            print("mlembed: " + self.datamodule.describe(self.trainer.world_size).replace("\n", "\nmlembed: "))
        if total and self.trainer.max_steps == -1:
            # fit_loop.max_steps is read-only in Lightning 2.6; the epoch loop owns the value.
            self.trainer.fit_loop.epoch_loop.max_steps = optimizer_steps(total, self.trainer.accumulate_grad_batches)
        if total:
            self._validate_within_run(total)

    def _validate_within_run(self, batches: int) -> None:
        """Lower validation intervals that a run of ``batches`` training batches per epoch never reaches.

        A shortened run (``--data.stage1.steps 30`` on configs/demo.yaml, which validates every 120 batches)
        stopped with Lightning's "val_check_interval (120) must be less than or equal to the number of the
        training batches (40)"; with ``check_val_every_n_epoch`` None (or larger than the run's epochs) it
        never validated, without a word. Each such setting is lowered to what the run reaches, so it validates
        at its end, and one line says so. Lightning reads both values from the trainer in ``fit_loop.setup_data``
        (inside ``trainer.fit``), after this hook.
        """
        trainer = self.trainer
        if (trainer.fast_dev_run or not trainer.limit_val_batches or trainer.max_steps <= 0
                or getattr(trainer, "_val_check_time_interval", None) is not None):
            return  # fast_dev_run sets its own intervals; no validation; no step bound; time-based validation
        limit = trainer.limit_train_batches  # Lightning's _parse_num_batches: an int caps, a float is a fraction
        per_epoch = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        if per_epoch < 1:
            return
        run = trainer.max_steps * trainer.accumulate_grad_batches  # training batches until max_steps
        epochs = -(-run // per_epoch)
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            epochs = min(epochs, trainer.max_epochs)
        run = min(run, epochs * per_epoch)
        every = trainer.check_val_every_n_epoch
        interval = getattr(trainer, "val_check_interval", None)
        if isinstance(interval, int) and not isinstance(interval, bool):
            # An int counts batches of the epoch, or of the whole run when check_val_every_n_epoch is None.
            reach, what = (per_epoch, "batches per epoch") if every is not None else (run, "batches in the run")
            if interval > reach:
                trainer.val_check_interval = reach
                print(f"mlembed: --trainer.val_check_interval={interval} is more than the {reach} training {what}; "
                      f"validating every {reach} batches instead")
        if every is not None and every > epochs:
            trainer.check_val_every_n_epoch = epochs
            print(f"mlembed: --trainer.check_val_every_n_epoch={every} is more than the {epochs} epoch(s) of the "
                  f"run; validating every {epochs} epoch(s) instead")

    def before_instantiate_classes(self) -> None:
        # Presets stacked with several --config files append callbacks; the same one twice is dropped.
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        callbacks = config.get("trainer", {}).get("callbacks")
        if isinstance(callbacks, list):
            config["trainer"]["callbacks"] = unique_callbacks(callbacks)
        if config.get("trainer") is not None and config.get("model") is not None:
            clipping_for_grad_cache(config.trainer, config.model)

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before Lightning merges the checkpoint's hyperparameters into the config.

        Lightning 2.6 replaces the config's model settings by the checkpoint's without a word, so a config with
        MEL on silently trained a MEL-off checkpoint with MEL off. Here a missing or unreadable file is named,
        and the axis switches (and the MEL rank) must agree; the rest stays Lightning's behaviour.
        """
        path = self._checkpoint_file()
        if path is not None:
            config = self.config[self.config.subcommand]
            saved = read_hyperparameters(path)
            check_axes(path, saved["model"], config.model)
            if self.config.subcommand == "fit" and not config.get(ALLOW_CHANGE):
                check_objective(path, saved, config)
        super()._parse_ckpt_path()

    def _checkpoint_file(self) -> Path | None:
        """The ``--ckpt_path`` file of this subcommand, or None when there is none for this class to read."""
        if not self.config.get("subcommand"):
            return None
        value = self.config[self.config.subcommand].get("ckpt_path")
        if not value or value in SPECIAL_CKPT_PATHS or str(value).startswith("registry") or "://" in str(value):
            return None  # Lightning resolves these (and remote paths) itself
        path = Path(value)
        if path.is_dir():
            # FSDP with state_dict_type "sharded" saves a directory: one file per rank plus the metadata.
            if not sharded.is_sharded_checkpoint(path):
                raise FileNotFoundError(f"--ckpt_path {path} is a directory but not a sharded Lightning checkpoint "
                                        f"(it lacks {sharded.METADATA} or {sharded.TENSOR_INDEX})")
            return path
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path {path} does not exist")
        return path


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps that train all ``batches`` when ``accumulate`` batches make one step.

    Lightning steps the optimizer on the last batch of the loader even when fewer than ``accumulate`` batches
    were gathered, so rounding up trains every batch (rounding down silently dropped the tail of the last stage).
    """
    steps = -(-batches // accumulate)
    if batches % accumulate:
        print(f"mlembed: the stages hold {batches} batches, not a multiple of --trainer.accumulate_grad_batches="
              f"{accumulate}: the last of the {steps} optimizer steps accumulates {batches % accumulate} batches")
    return steps



def clipping_for_grad_cache(trainer: Any, model: Any) -> None:
    """Hand ``--trainer.gradient_clip_val`` to gradient caching, which Lightning's clipping cannot serve.

    Gradient caching runs manual optimization, and Lightning refuses its own clipping there, so a config that
    clips (``configs/qwen3_0.6b.yaml`` does) failed as soon as ``--model.grad_cache`` was added. The same norm
    clipping moves to ``--model.grad_cache.gradient_clip_val``; a conflicting setting is named instead.

    Args:
        trainer: the ``trainer`` part of the parsed config (changed in place).
        model: the ``model`` part of the parsed config (changed in place).
    """
    cache, value = model.get("grad_cache"), trainer.get("gradient_clip_val")
    if cache is None or value is None:
        return
    if trainer.get("gradient_clip_algorithm") not in (None, "norm"):
        raise ValueError("--trainer.gradient_clip_algorithm: gradient caching clips by norm only; set it to norm or "
                         "drop --trainer.gradient_clip_val")
    own = cache.get("gradient_clip_val")
    if own is not None and own != value:
        raise ValueError(f"--trainer.gradient_clip_val={value} and --model.grad_cache.gradient_clip_val={own} "
                         "disagree; with gradient caching set only the second")
    cache["gradient_clip_val"] = value
    trainer["gradient_clip_val"] = None
    print(f"mlembed: gradient caching clips the gradient norm to {value} (--trainer.gradient_clip_val moved to "
          "--model.grad_cache.gradient_clip_val: Lightning does not clip under manual optimization)")


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
    quiet()
    return MLEmbedCLI(
        EmbeddingModule,
        LightningDataModule,
        subclass_mode_data=True,
        parser_kwargs={"prog": "mlembed"},
        save_config_callback=WandbSaveConfig,  # config.yaml in the log dir, and in the wandb run when one is on
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )




def main(argv: list[str] | None = None) -> int:
    """``mlembed fit|validate|test|predict ...`` (argv starts with the subcommand; None: ``sys.argv``)."""
    check_config_files(sys.argv[1:] if argv is None else argv)
    lightning_main(argv)
    return 0


def check_config_files(argv: list[str]) -> None:
    """Read every ``--config`` file first, so a missing file or a YAML mistake is one line naming the file and the
    line (LightningCLI would print its whole usage, then a YAML error that names no file)."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        if path.lstrip().startswith(("{", "[")):  # an inline YAML/JSON value, not a file
            continue
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        try:
            yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"--config {path}{where}: not valid YAML ({problem})") from None
