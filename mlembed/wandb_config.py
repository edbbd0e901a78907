"""WandbSaveConfig: the resolved CLI config (trainer, data, seed, not only the model) in the wandb run.

Lightning logs only the LightningModule's hyperparameters to wandb and writes ``config.yaml`` next to the
logger's save_dir, outside the run. This callback also sends the whole resolved config to every WandbLogger,
as flat dotted keys (``model.mel.enabled``) that match sweep parameter names, and attaches ``config.yaml``
to the run's files. Wire it with ``LightningCLI(save_config_callback=WandbSaveConfig)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


class WandbSaveConfig(SaveConfigCallback):
    """SaveConfigCallback that also puts the resolved config into every WandbLogger's run (rank zero only)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0, and save_config runs on rank 0 only: ask on every rank here.
        self._log_dir = trainer.log_dir
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        flat = flatten(resolved)
        saved = Path(self._log_dir or ".") / self.config_filename
        for logger in loggers:
            # allow_val_change: a sweep agent has already set its parameters (the same values) in run.config.
            logger.experiment.config.update(flat, allow_val_change=True)
            if self.save_to_log_dir and saved.is_file():
                logger.experiment.save(str(saved), base_path=str(saved.parent), policy="now")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"mel": {"rank": 8}}}`` -> ``{"model.mel.rank": 8}``; lists stay values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
