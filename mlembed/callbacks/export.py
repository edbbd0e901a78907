"""ModelExport: export the trained model when fit ends, and log the export to wandb as a model artifact."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info

from mlembed.artifact import MODES, Point, check_exportable
from mlembed.card import TrainingRecord
from mlembed.export import check_target, directory_bytes, export

Mode = Literal["compat", "efficiency"]
ARTIFACT_NAME = re.compile(r"^[\w.-]+$")
"""What wandb accepts as an artifact name: letters, digits, dashes, underscores and dots."""


class ModelExport(Callback):
    """Exports the model at one (rank, depth, dim) point at the end of fit, as ``mlembed export`` would.

    The export is made from the module in memory (the weights fit ended with, not the last checkpoint) on global
    rank 0; the other ranks wait for it. Under a sharded strategy (FSDP) no rank holds whole weights: they are
    gathered into a temporary checkpoint file next to the export on rank 0, which is exported from it.
    ``mlembed.load(out_dir)`` reads the result. The arguments are checked against the model in ``setup``, so a
    wrong one stops the run before the first step rather than after the last.

    Args:
        out_dir: the export directory (default: ``trainer.log_dir`` + ``/export``: the versioned directory of
            TensorBoard/CSV, or default_root_dir without a logger; for wandb, whose log_dir is its save_dir,
            ``save_dir/export/<run id>``).
        mode: ``compat`` (a Hugging Face + sentence-transformers directory, dense embedding), ``efficiency``
            (MEL factors, read only by ``mlembed.load``), or a list of both. A single mode is written into
            ``out_dir`` itself; a list writes each mode into ``out_dir/<mode>``.
        rank: MEL rank k of the exported embedding (None: the trained maximum; must be None when MEL is off).
        depth: number of layers kept (None: all).
        dim: embedding size D of the exported encoder (None: the hidden size).
        overwrite: replace an existing non-empty export directory (otherwise the run fails in ``setup``).
        log_artifact: when one of the trainer's loggers is a WandbLogger, log the export directory as a
            wandb artifact of type ``model``, with the point and the mode as metadata.
        artifact_name: name of the wandb artifact (letters, digits, ``-``, ``_``, ``.``); each run adds a version.
    """

    def __init__(
        self,
        out_dir: str | None = None,
        mode: Mode | list[Mode] = "compat",
        rank: int | None = None,
        depth: int | None = None,
        dim: int | None = None,
        overwrite: bool = False,
        log_artifact: bool = True,
        artifact_name: str = "mlembed-model",
    ) -> None:
        modes = [mode] if isinstance(mode, str) else list(mode)
        if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
            raise ValueError(f"ModelExport mode ({mode!r}) must be one of {MODES} or a list of distinct ones")
        for name, value in (("rank", rank), ("depth", depth), ("dim", dim)):
            if value is not None and value < 1:
                raise ValueError(f"ModelExport {name} ({value}) must be positive, or null for the full size")
        if not ARTIFACT_NAME.match(artifact_name):
            raise ValueError(f"ModelExport artifact_name ({artifact_name!r}) may hold only letters, digits, '-', "
                             "'_' and '.'")
        self.out_dir, self.mode, self.modes = out_dir, mode, modes
        self.rank, self.depth, self.dim = rank, depth, dim
        self.overwrite, self.log_artifact, self.artifact_name = overwrite, log_artifact, artifact_name
        self.point: Point | None = None
        """The resolved (rank, depth, dim), set in ``setup``."""
        self.exported: Path | None = None
        """The export directory, once written."""

    # -- hooks --------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pl_module.configure_model()  # idempotent; SVDInit builds here too, before any wrapping
        self.point = self.check(pl_module)
        out = self.output_dir(trainer)  # on every rank: trainer.log_dir is a collective
        if trainer.is_global_zero:
            for target in self._targets(out).values():
                check_target(target, self.overwrite, flag="ModelExport out_dir:", switch="set overwrite: true")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        out = self.output_dir(trainer)  # on every rank (collective)
        record = TrainingRecord.from_trainer(trainer, pl_module)  # on every rank: trainer.log_dir is a collective
        if _is_sharded(trainer.strategy):
            self._export_sharded(trainer, pl_module, out, record)
        elif trainer.is_global_zero:
            self._export(pl_module, out, record)
        if trainer.is_global_zero:
            self.exported = out
            rank_zero_info(f"ModelExport: {self.modes} at {self.point} in {out} "
                           f"({directory_bytes(out) / 2**20:.1f} MiB)")
            if self.log_artifact:
                for logger in trainer.loggers:
                    if isinstance(logger, WandbLogger):
                        self._log_artifact(logger, out, trainer.global_step)
        trainer.strategy.barrier("ModelExport")  # the export exists when fit returns, on every rank

    # -- pieces ---------------------------------------------------------------------------------------
    def output_dir(self, trainer: Trainer) -> Path:
        """Where the export goes; call it on every rank (it reads ``trainer.log_dir``)."""
        if self.out_dir:
            return Path(self.out_dir)
        root = Path(trainer.log_dir or trainer.default_root_dir)
        logger = trainer.logger
        if logger is not None and logger.save_dir and root == Path(logger.save_dir) and logger.version is not None:
            # wandb's log_dir is its save_dir, shared by every run: give each run its own export.
            return root / "export" / str(logger.version)
        return root / "export"

    def check(self, module: LightningModule) -> Point:
        """The resolved point; raises, naming the init argument, when the module cannot be exported as asked."""
        return check_exportable(module.encoder.shape(), self.modes, rank=self.rank, depth=self.depth, dim=self.dim,
                                flag=lambda name: f"ModelExport {name}")

    def _targets(self, out: Path) -> dict[str, Path]:
        """``{mode: directory}``: ``out`` itself for a single mode, ``out/<mode>`` for a list."""
        if isinstance(self.mode, str):
            return {self.mode: out}
        return {mode: out / mode for mode in self.modes}

    def _export(self, source: LightningModule | Path, out: Path, record: TrainingRecord) -> None:
        """Export ``source`` (the module, or a checkpoint file) in every mode."""
        point = self.point
        for mode, target in self._targets(out).items():
            export(source, target, mode=mode, rank=point.rank, depth=point.depth, dim=point.dim,
                   overwrite=self.overwrite, record=record)

    def _export_sharded(self, trainer: Trainer, pl_module: LightningModule, out: Path, record: TrainingRecord) -> None:
        """FSDP: the shards are gathered into a whole checkpoint on rank 0, which is exported, then removed."""
        checkpoint = _gather_checkpoint(trainer, pl_module, out.parent)  # every rank: gathering is a collective
        if checkpoint is None:
            return
        try:
            self._export(checkpoint, out, record)
        finally:
            shutil.rmtree(checkpoint.parent, ignore_errors=True)

    def _log_artifact(self, logger: WandbLogger, out: Path, step: int) -> None:
        import wandb

        point = self.point
        artifact = wandb.Artifact(
            self.artifact_name, type="model",
            description=f"mlembed export ({', '.join(self.modes)}) at rank {point.rank}, depth {point.depth}, "
                        f"dim {point.dim}",
            metadata={"rank": point.rank, "depth": point.depth, "dim": point.dim, "mode": self.mode,
                      "global_step": step},
        )
        artifact.add_dir(str(out))
        logger.experiment.log_artifact(artifact)
        rank_zero_info(f"ModelExport: logged {out} as wandb artifact {self.artifact_name!r}")


def _is_sharded(strategy: Strategy) -> bool:
    """Whether no single rank holds the whole weights (FSDP, tensor/model parallel)."""
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def _gather_checkpoint(trainer: Trainer, pl_module: LightningModule, directory: Path) -> Path | None:
    """A Lightning-format checkpoint file of the whole weights, written on global rank 0 (None on the others).

    Every rank writes its shard with ``trainer.save_checkpoint`` (weights only); rank 0 merges a sharded
    (directory) checkpoint's model tensors with ``mlembed.sharded.model_state``. The hyperparameters come from the
    module in memory, not from the checkpoint's metadata file (its dataclasses fail torch's weights-only load).
    Gathering a full state dict in memory instead crashed FSDP on CPU (a segfault with torch 2.13); this path does not.
    """
    import lightning
    import torch

    from mlembed.sharded import model_state

    if trainer.is_global_zero:
        directory.mkdir(parents=True, exist_ok=True)
    work = Path(trainer.strategy.broadcast(tempfile.mkdtemp(prefix=".export-", dir=directory)
                                           if trainer.is_global_zero else None))
    saved = work / "fit-end.ckpt"
    trainer.save_checkpoint(saved, weights_only=True)  # every rank: its shard (or rank 0 the full file)
    if not trainer.is_global_zero:
        return None
    if saved.is_dir():
        state = model_state(saved)
    else:
        state = torch.load(saved, map_location="cpu", weights_only=False)["state_dict"]
    # What Lightning's own checkpoints hold for load_from_checkpoint: the weights and the hyperparameters.
    checkpoint = {"state_dict": state, pl_module.CHECKPOINT_HYPER_PARAMS_KEY: dict(pl_module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    if getattr(pl_module, "_hparams_name", None):
        checkpoint[pl_module.CHECKPOINT_HYPER_PARAMS_NAME] = pl_module._hparams_name
    torch.save(checkpoint, work / "whole.ckpt")
    return work / "whole.ckpt"
