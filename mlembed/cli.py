"""The command line: ``python -m mlembed fit|validate|test|predict`` (LightningCLI) and the tool subcommands.

``shards``, ``export``, ``evaluate`` and ``sweep`` are plain argparse programs in their own modules; the
Lightning subcommands get argument links so the tokenizer and the sequence length are said once (on the model).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonargparse
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from mlembed import sharded
from mlembed.callbacks.run_log import RunLog, continue_log
from mlembed.data.records import RecordError
from mlembed.data.stream import ShardError
from mlembed.module import EmbeddingModule
from mlembed.wandb_config import WandbSaveConfig

#: Subcommands that are not Lightning's, as ``module:function`` taking argv and returning an exit code.
TOOLS = {
    "shards": "mlembed.data.shards_cli:main",
    "export": "mlembed.export:main",
    "evaluate": "mlembed.evaluation.run:main",
    "sweep": "mlembed.sweep:main",
}
#: ``--ckpt_path`` values that Lightning resolves itself: they name no file to read here.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
#: Model settings a checkpoint must share with the config given with it (``mel.rank`` too when MEL is on).
AXIS_SWITCHES = ("mel.enabled", "mll.enabled", "mrl.enabled")
#: Model settings that define the training objective: resuming a fit with other values changes it mid-run.
MODEL_OBJECTIVE = ("mel", "mll", "mrl", "loss", "instruction_template")
#: Settings of each data stage that define the objective (which negatives, which query text).
STAGE_OBJECTIVE = ("num_negatives", "negative_draw", "instructions", "templates")
#: The flag that lets a fit resume with a changed objective.
ALLOW_CHANGE = "allow_objective_change"


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


def read_hyperparameters(path: Path) -> dict:
    """The hyperparameters saved in the Lightning checkpoint ``path``: ``{"model": ..., "data": ...}``."""
    checkpoint = read_checkpoint(path)
    return {"model": checkpoint.get("hyper_parameters") or {},
            "data": checkpoint.get("datamodule_hyper_parameters") or {}}


def read_checkpoint(path: Path) -> dict:
    """The top-level entries of the Lightning checkpoint ``path``, its tensors left on disk.

    ``path`` is a checkpoint file, or a sharded checkpoint directory, whose metadata file is read instead.
    ``weights_only=True`` unpickles only tensors and plain containers, so the file cannot run code; that is
    enough because LightningCLI saves the model's settings as plain dicts. ``mmap`` leaves the weights and the
    optimizer state on disk, since only the hyperparameters are needed here.
    """
    file = path / sharded.METADATA if path.is_dir() else path
    # torch.save writes zip archives (mmap needs one); anything else would fail with a message about mmap.
    if not zipfile.is_zipfile(file):
        raise ValueError(f"--ckpt_path {file} is not a Lightning checkpoint (not an archive written by torch.save)")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many kinds; all mean the file is not a checkpoint we can read
        raise ValueError(f"--ckpt_path {file} could not be read as a Lightning checkpoint: {err}") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"--ckpt_path {file} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def check_axes(path: Path, saved: dict, config: Any) -> None:
    """Raise when the checkpoint ``path`` was trained with other axis switches (or MEL rank) than ``config``.

    Args:
        path: the checkpoint, named in the error.
        saved: its model hyperparameters (nested dicts, or dataclasses).
        config: the model part of the parsed config (a jsonargparse Namespace).
    """
    keys = list(AXIS_SWITCHES)
    if _setting(saved, "mel.enabled") and _setting(config, "mel.enabled"):
        keys.append("mel.rank")  # the factors' shape: a checkpoint of another rank cannot be loaded
    for key in keys:
        old, new = _setting(saved, key), _setting(config, key)
        if old is not None and new is not None and old != new:
            raise ValueError(
                f"--model.{key}: the checkpoint {path} was trained with {key}={old} but the config says {new}; "
                f"set --model.{key}={old} to resume it, or start without --ckpt_path"
            )


def check_objective(path: Path, saved: dict, config: Any) -> None:
    """Raise when resuming ``path`` with ``config`` would change the training objective mid-run.

    Compares every loss setting of the model (:data:`MODEL_OBJECTIVE`) and of each data stage
    (:data:`STAGE_OBJECTIVE`) and names each flag that differs with its old and new value. A checkpoint that
    saved no settings cannot be compared, and is refused too.

    Args:
        path: the checkpoint, named in the error.
        saved: :func:`read_hyperparameters` of ``path``.
        config: the subcommand's parsed config (a jsonargparse Namespace with ``model`` and ``data``).
    """
    escape = f"--{ALLOW_CHANGE}=true"
    if not saved["model"]:
        raise ValueError(f"--ckpt_path {path} holds no saved settings, so mlembed cannot check that resuming keeps the "
                         f"same loss; pass {escape} to resume it anyway")
    data = config.get("data")
    data = data.get("init_args", data) if data is not None else None
    pairs = [(f"model.{key}", _flat(_setting(saved["model"], key)), _flat(_setting(config.model, key)))
             for key in MODEL_OBJECTIVE]
    if saved["data"] and data is not None:
        pairs += [(f"data.{stage}.{key}", _flat(_saved_stage_setting(saved["data"], stage, key)),
                   _flat(_setting(data, f"{stage}.{key}")))
                  for stage in ("stage1", "stage2") for key in STAGE_OBJECTIVE]
    changes = []
    for flag, old, new in pairs:
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f"--{flag}{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    if changes:
        raise ValueError(f"resuming --ckpt_path {path} would change the training objective:\n  "
                         + "\n  ".join(changes) + f"\nrestore these values, or pass {escape} to change it on purpose")


#: Stage settings added after checkpoints were first written, with the value those checkpoints trained with.
STAGE_SETTINGS_BEFORE = {"negative_draw": "row"}


def _saved_stage_setting(saved: dict, stage: str, key: str) -> Any:
    """A stage setting of a checkpoint; one it predates is the value it trained with."""
    value = _setting(saved, f"{stage}.{key}")
    if value is None and _setting(saved, stage) is not None:
        return STAGE_SETTINGS_BEFORE.get(key)
    return value


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values of nested dicts, Namespaces or dataclasses by ``.dotted`` suffix (``""`` for a leaf)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, jsonargparse.Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not str(key).startswith("_"):  # LightningCLI's _class_path and _instantiator
                out.update(_flat(item, f"{prefix}.{key}"))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


def _setting(settings: Any, dotted: str) -> Any:
    """``settings.a.b`` for ``"a.b"`` through dicts, Namespaces or dataclasses; None when a level is absent."""
    value = settings
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            return None
    return value


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
    return MLEmbedCLI(
        EmbeddingModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=WandbSaveConfig,  # config.yaml in the log dir, and in the wandb run when one is on
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
    command = args[0] if args and not args[0].startswith("-") else "fit"
    try:
        if command in TOOLS:
            return int(_tool(command)(args[1:]) or 0)
        # None lets LightningCLI read sys.argv itself (it warns when given both).
        lightning_main(None if argv is None else args)
    except Exception as err:
        message = user_error(err)
        if message is None:
            raise
        print(f"mlembed {command}: error: {message}\n(the traceback: set {TRACEBACK_ENV}=1)", file=sys.stderr)
        return 2
    release_process_group()
    return 0


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)
"""The exception types mlembed raises for bad settings and input: each message names the flag, file or record."""
TRACEBACK_ENV = "MLEMBED_TRACEBACK"
PACKAGE = Path(__file__).resolve().parent
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')
_RAISED = re.compile(r"^(?:[\w.]+\.)?(?P<type>\w+): (?P<message>.*)", re.DOTALL)


def user_error(err: BaseException) -> str | None:
    """The message of mlembed's own report of a user's mistake in ``err``, or None (a bug: keep the traceback).

    A user's mistake is an exception of ``USER_ERRORS`` raised by mlembed's own code (the innermost frame is in
    the package), met on ``err`` or on the chain of exceptions that caused it (jsonargparse wraps a settings
    class's error in its own), or one a loader worker raised (torch re-raises it with the worker's traceback as
    text). The same types raised inside torch or transformers keep their traceback, as does everything when
    ``MLEMBED_TRACEBACK`` is set.
    """
    if os.environ.get(TRACEBACK_ENV):
        return None
    while err is not None:
        if isinstance(err, USER_ERRORS) and err.__traceback__ is not None:
            innermost = Path(traceback.extract_tb(err.__traceback__)[-1].filename).resolve()
            if innermost.is_relative_to(PACKAGE):
                return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        message = _worker_user_error(str(err))
        if message is not None:
            return message
        err = err.__cause__
    return None


def _worker_user_error(text: str) -> str | None:
    """The user-error message inside a loader worker's re-raised traceback text (see ``user_error``), or None."""
    if "\nOriginal Traceback (most recent call last):" not in text:
        return None
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if _FRAME.match(line)]
    if not frames:
        return None
    innermost = Path(_FRAME.match(lines[frames[-1]])["file"]).resolve()
    raised = next((i for i in range(frames[-1] + 1, len(lines)) if not lines[i].startswith(" ")), None)
    found = _RAISED.match("\n".join(lines[raised:])) if raised is not None else None
    known = {kind.__name__ for kind in (*USER_ERRORS, RecordError, ShardError)}
    if found is None or found["type"] not in known or not innermost.is_relative_to(PACKAGE):
        return None
    return found["message"].strip()


def release_process_group() -> None:
    """Tear the process group down, all ranks together, before the interpreter exits.

    Left to interpreter exit, gloo can abort a finished rank ("terminate called without an active exception")
    and turn a good run into a failed exit code. The barrier first makes every rank finish its last collective,
    so no rank closes its connections while a peer still talks to it.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    try:
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
