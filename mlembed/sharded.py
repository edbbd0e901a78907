"""Sharded Lightning checkpoints: the directories FSDP writes with ``state_dict_type: sharded``.

Such a directory holds one ``.distcp`` file per rank, torch.distributed.checkpoint's ``.metadata``, and Lightning's
``meta.pt`` (everything but the tensors: hyperparameters, loop and callback states). ``Trainer.fit(ckpt_path=DIR)``
resumes it on any number of ranks. This module reads one in a single process without a process group, for
export, evaluation and the CLI's checkpoint checks. Only the model's tensors are read: the optimizer state
(twice the model with Adam) stays on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

#: Lightning's name for the non-tensor part of a sharded checkpoint.
METADATA = "meta.pt"
#: torch.distributed.checkpoint's index of the tensors and where their shards are.
TENSOR_INDEX = ".metadata"
#: The top-level key Lightning saves the module's state dict under (optimizers are ``optimizer_0``, ...).
MODEL_KEY = "model"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by Lightning's FSDP strategy with sharded state dicts."""
    path = Path(path)
    return path.is_dir() and (path / METADATA).is_file() and (path / TENSOR_INDEX).is_file()


def read_metadata(path: str | os.PathLike, *, weights_only: bool = True) -> dict:
    """The ``meta.pt`` dict of the sharded checkpoint ``path``.

    Args:
        path: the checkpoint directory.
        weights_only: torch's safe unpickling. Checkpoints of CLI runs hold plain hyperparameters and pass; a
            module built in Python with dataclass settings needs False (trusted files only).
    """
    return torch.load(Path(path) / METADATA, map_location="cpu", weights_only=weights_only)


def model_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The whole (unsharded) model state dict in the sharded checkpoint ``path``, on the CPU.

    Raises:
        ValueError: when the directory holds no model tensors under Lightning's key, or a shard is missing or
            unreadable (the message names the directory and the file).
    """
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(path))
    try:
        index = reader.read_metadata()
    except Exception as err:  # a truncated or foreign index: unpickling raises many kinds
        raise ValueError(f"sharded checkpoint {path}: its index {TENSOR_INDEX} could not be read: {err}") from err
    # planner_data maps each flat key to its path in the saved nested dict: ("model", "<module key>").
    paths = index.planner_data or {}
    wanted = {}
    for flat, item in index.state_dict_metadata.items():
        nested = paths.get(flat, tuple(flat.split(".", 1)))
        if len(nested) == 2 and nested[0] == MODEL_KEY and isinstance(item, TensorStorageMetadata):
            wanted[nested[1]] = torch.empty(item.size, dtype=item.properties.dtype)
    if not wanted:
        raise ValueError(f"sharded checkpoint {path} holds no model tensors (no '{MODEL_KEY}.*' entries)")
    try:
        load({MODEL_KEY: wanted}, storage_reader=reader, no_dist=True)
    except CheckpointException as err:  # a BaseException: it would get past the callers' error handling
        raise ValueError(f"sharded checkpoint {path} could not be read: {_first_failure(err)}") from None
    return wanted


def _first_failure(err) -> str:
    """The underlying error of a CheckpointException (its failures map each rank to (exception, traceback))."""
    for failure in err.failures.values():
        cause = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(cause, OSError) and cause.filename:
            return f"{cause.strerror}: {cause.filename}"
        return repr(cause)
    return str(err)


def consolidate(path: str | os.PathLike, *, weights_only: bool = False) -> dict:
    """The sharded checkpoint ``path`` as the dict of a one-file Lightning checkpoint, model weights only.

    The result has ``state_dict`` and the metadata (hyperparameters, versions, loop states), so
    ``LightningModule.load_from_checkpoint`` accepts it once saved; the optimizer states are left out.
    """
    checkpoint = read_metadata(path, weights_only=weights_only)
    checkpoint["state_dict"] = model_state(path)
    return checkpoint
