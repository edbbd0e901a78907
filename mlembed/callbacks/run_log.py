"""One run, one metrics log: a fit resumed with ``--ckpt_path`` continues the log of the run it resumes.

Left to Lightning, a resumed fit opens a new ``version_N`` folder, and the steps between the checkpoint and the
interruption, logged before it, appear again in the new one. The checkpoint now records which log its run wrote
(``RunLog``), and ``continue_log`` points the resumed run's CSV logger at that same folder, keeping the rows
of the steps before the checkpoint and dropping the later ones, which the resumed run logs again: each step
once. A wandb run is resumed under its own id (``resume="allow"``): the server keeps one run, and steps it has
already seen are not logged twice. Other loggers keep Lightning's behaviour (a new version).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from mlembed.artifact import RUN_LOG_KEY

KEY = RUN_LOG_KEY
"""The checkpoint entry that records the run's log folders and working directory."""


class RunLog(Callback):
    """Records the version of each CSV log of the run in every checkpoint (added by the CLI to every fit)."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = {"csv": [{"root_dir": str(logger.root_dir), "version": logger.version}
                                   for logger in trainer.loggers if isinstance(logger, CSVLogger)],
                           "wandb": [logger.version for logger in trainer.loggers if isinstance(logger, WandbLogger)],
                           "cwd": os.getcwd(),  # where the run's relative paths (its shards) resolve
                           # For an export's model card: the run's own folder (its config.yaml) and its grid.
                           "log_dir": _log_dir(trainer), "grid": _grid_dir(trainer)}


def _log_dir(trainer: Trainer) -> str | None:
    """The first logger's folder of this run, read without the collective ``trainer.log_dir``."""
    for logger in trainer.loggers:
        folder = logger.save_dir if isinstance(logger, WandbLogger) else getattr(logger, "log_dir", None)
        return None if folder is None else str(folder)
    return None


def _grid_dir(trainer: Trainer) -> str | None:
    """Where this fit's ``GridEvaluation`` writes its final grid, if it has one."""
    for callback in trainer.callbacks:
        if hasattr(callback, "grid_dir") and callback.grid_dir is not None:
            return str(callback.grid_dir)
    return None


def continue_log(trainer: Trainer, checkpoint: dict) -> list[Path]:
    """Point ``trainer``'s CSV loggers at the logs of the run ``checkpoint`` was saved from.

    Call it before ``trainer.fit`` (the loggers must not have made their folders yet). A logger given its own
    ``version`` keeps it. Rows logged at or after the checkpoint's step are dropped (the resumed run logs those
    steps again), the rest are kept, and a ``resumed_at_step`` row marks the join.

    Args:
        trainer: The trainer about to resume.
        checkpoint: The checkpoint's top-level entries (``global_step`` and ``RunLog``'s record are read).

    Returns:
        The metrics files continued.
    """
    saved = {entry["root_dir"]: entry["version"] for entry in (checkpoint.get(KEY) or {}).get("csv", [])}
    step = int(checkpoint.get("global_step", 0))
    continued = []
    runs = iter((checkpoint.get(KEY) or {}).get("wandb", []))
    for logger in trainer.loggers:
        run = next(runs, None) if isinstance(logger, WandbLogger) else None
        if run and logger._experiment is None and not logger._wandb_init.get("id"):
            logger._wandb_init.update(id=run, resume="allow")  # read when the run starts (lazily)
            logger._id = run
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or logger._version is not None or str(logger.root_dir) not in saved:
            continue
        logger._version = saved[str(logger.root_dir)]  # CSVLogger has no public setter; read lazily at first use
        metrics = Path(logger.log_dir) / "metrics.csv"
        rows = _rows_before(metrics, step)
        if trainer.is_global_zero:
            writer = logger.experiment  # Lightning's writer deletes an existing metrics.csv here...
            writer.log_metrics({"resumed_at_step": step}, step=step)
            writer.metrics[:0] = rows  # ...so the kept rows go back in first, with the marker after them
            writer.save()
            continued.append(metrics)
    return continued


def _rows_before(metrics: Path, step: int) -> list[dict]:
    """The rows of ``metrics`` logged before ``step`` (their empty cells left out)."""
    if not metrics.is_file():
        return []
    with metrics.open(newline="", encoding="utf-8") as handle:
        rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
    return [row for row in rows if "step" in row and int(float(row["step"])) < step]
