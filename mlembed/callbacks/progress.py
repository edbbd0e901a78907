"""What a run shows while it trains: the stage, the step of the whole run, the loss and the rate, and the model's size.

An mlembed run is one pass over its stages (the loader holds every step), so Lightning's "Epoch 0/N" says nothing
and, when the epoch count is unbounded, reads "Epoch 0/-2". ``Progress`` names the stage instead. In a terminal it is
Lightning's rich bar; when the output goes to a file (a job's log), a bar is only drawn once, at the end, so
``Progress`` writes one plain line every few steps instead. ``ModelSize`` replaces Lightning's model table, whose
FLOPs column reads 0 for a model that declares no example input.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import get_human_readable_count


class Progress(RichProgressBar):
    """Training progress by stage and step, as a bar in a terminal and as lines in a log file.

    Args:
        every: steps between two lines in a log file (default: the trainer's ``log_every_n_steps``).
        lines: write lines (True) or draw the bar (False); None: lines unless the output is a terminal.
        **kwargs: Lightning's ``RichProgressBar`` arguments (``refresh_rate``, ``leave``, ``theme``...).
    """

    def __init__(self, every: int | None = None, lines: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if every is not None and every < 1:
            raise ValueError(f"Progress every ({every}) must be at least 1 step")
        self.every, self.lines = every, lines
        self._stage: int | None = None
        self._started = self._last_time = 0.0
        self._last_step = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.lines is None:
            from rich import get_console

            self.lines = not get_console().is_terminal
        if self.lines:
            self.disable()  # the bar's hooks do nothing; the line hooks below still run
        super().setup(trainer, pl_module, stage)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: the same number all run long
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        return f"stage {self._stage}" if self._stage is not None else "training"

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = self._last_time = time.monotonic()
        self._last_step = trainer.global_step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        stage = batch.get("stage") if isinstance(batch, dict) else None
        if stage is None or stage == self._stage:
            return
        ended, self._stage = self._stage, stage
        if self.lines and ended is not None:
            if trainer.global_step != self._last_step:
                self._line(trainer, stage=ended)
            if trainer.is_global_zero:
                _say(f"stage {ended} done at step {trainer.global_step}, {_clock(time.monotonic() - self._started)} "
                     "elapsed")
        if not self.lines and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.lines:
            return
        step, total = trainer.global_step, self._total(trainer)
        every = self.every or trainer.log_every_n_steps or 1
        if step != self._last_step and (step % every == 0 or step == total):
            self._line(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.lines and not trainer.sanity_checking and trainer.is_global_zero:
            scores = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith("val")}
            shown = " · ".join(f"{k} {_number(v)}" for k, v in scores.items())
            _say(f"validation at step {trainer.global_step}" + (f": {shown}" if shown else ""))

    @rank_zero_only
    def _line(self, trainer: Trainer, stage: int | None = None) -> None:
        """One line: step of the run, stage, loss, the rate since the last line and the time left."""
        now, step, total = time.monotonic(), trainer.global_step, self._total(trainer)
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        parts = [f"step {step}/{total}" if total else f"step {step}", f"stage {stage or self._stage}"]
        loss = self.get_metrics(trainer, trainer.lightning_module).get("train/loss")
        if loss is not None:
            parts.append(f"loss {_number(loss)}")
        if step > self._last_step:
            parts.append(f"{rate:.2f} steps/s")
            if total and rate > 0:
                parts.append(f"{_clock(now - self._started)} elapsed, {_clock((total - step) / rate)} left")
        _say(" · ".join(parts))
        self._last_time, self._last_step = now, step

    @staticmethod
    def _total(trainer: Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        steps = trainer.estimated_stepping_batches  # optimizer steps of the run: accumulation and epochs counted
        return int(steps) if steps != float("inf") else None


class ModelSize(ModelSummary):
    """One line of the model's size (parameters, trainable, bytes) in place of Lightning's table."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int, **summarize_kwargs: Any) -> None:
        names = dict(summary_data).get("Name", [])
        kinds = dict(summary_data).get("Type", [])
        parts = ", ".join(f"{n} ({t})" for n, t in zip(names, kinds)) or "the model"
        _say(f"{parts}: {get_human_readable_count(total_parameters)} parameters, "
             f"{get_human_readable_count(trainable_parameters)} trainable, {model_size:.1f} MB")


def _number(value: Any) -> str:
    value = float(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _say(line: str) -> None:
    print(f"mlembed: {line}", file=sys.stdout, flush=True)
