"""Checks before a fit resumes ``--ckpt_path``: the file is a readable checkpoint, the axis switches agree, and
the training objective does not change mid-run (unless ``--allow_objective_change``)."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Any

import jsonargparse
import torch

from mlembed import sharded

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
        pairs += [(f"data.{stage}.{key}", _flat(_setting(saved["data"], f"{stage}.{key}")),
                   _flat(_setting(data, f"{stage}.{key}")))
                  for stage in ("stage1", "stage2") for key in STAGE_OBJECTIVE]
    changes = []
    for flag, old, new in pairs:
        for key in sorted(set(old) | set(new)):
            setting = f"{flag}{key}".split(".", 2)[-1] if flag.startswith("data.") else f"{flag}{key}"[len("model."):]
            if old.get(key) is None and setting in SETTINGS_BEFORE:
                old[key] = SETTINGS_BEFORE[setting]  # a setting the checkpoint predates: what it trained with
            if old.get(key) != new.get(key):
                changes.append(f"--{flag}{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    if changes:
        raise ValueError(f"resuming --ckpt_path {path} would change the training objective:\n  "
                         + "\n  ".join(changes) + f"\nrestore these values, or pass {escape} to change it on purpose")


#: Settings added after checkpoints were first written (by their name in the model or in a data stage), with the
#: value those checkpoints trained with.
SETTINGS_BEFORE = {"loss.kd_feature_weight": 0.0, "negative_draw": "row"}


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

