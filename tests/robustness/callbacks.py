"""Test-only callbacks, named by ``class_path`` on the command line: record steps, simulate a kill, inject a NaN."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SimulatedKill(RuntimeError):
    """What KillAt raises: stands for SIGKILL / a lost node in the middle of training."""


class StepRecorder(Callback):
    """Appends one JSON line per training step (step, loss, stage, MEL rank) to ``path``.

    Appending (not overwriting) lets a killed run and its resumption write one sequence between them. Only
    global rank 0 writes, so processes of a distributed run do not interleave their lines.

    Args:
        path: the JSON-lines file.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_rank != 0:
            return
        # A skipped (non-finite) step has no loss in its outputs.
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss = None if loss is None else loss.item()
        row = {"step": trainer.global_step - 1, "loss": loss, "stage": int(batch["stage"]),
               "rank": pl_module.encoder.mel_rank}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def read_steps(path: str | Path) -> list[dict]:
    """The rows a StepRecorder wrote."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


class KillAt(Callback):
    """Raises SimulatedKill when optimizer step ``step`` is about to run (``step`` steps are done and saved).

    Args:
        step: the global step at which the run dies.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise SimulatedKill(f"simulated kill before step {self.step}")


class PoisonAt(Callback):
    """Sets one weight to NaN for the batch of global step ``step`` only, so exactly that loss is non-finite.

    The weight is restored after the batch: a skipped step must leave the model as it was.

    Args:
        step: the global step whose loss becomes NaN.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self._saved: torch.Tensor | None = None

    def _weight(self, pl_module: LightningModule) -> torch.Tensor:
        return pl_module.encoder.backbone.layer_list()[0].attention.self.query.weight

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            weight = self._weight(pl_module)
            self._saved = weight.detach().clone()
            with torch.no_grad():
                weight[0, 0] = float("nan")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self._saved is not None:
            with torch.no_grad():
                self._weight(pl_module).copy_(self._saved)
            self._saved = None


class SnapshotAround(Callback):
    """Saves the model, optimizer and schedule state around training batch ``batch`` (0-based, counted here).

    Three snapshots go to ``dirpath``: ``before.pt`` (end of the batch before, after its optimizer step),
    ``after.pt`` (end of batch ``batch``) and ``next.pt`` (end of the batch after). Callbacks run in the order
    they are given, so one added after PoisonAt sees the poisoned weight already restored at ``after``.

    Args:
        batch: the index, among the training batches of this run, of the batch to watch.
        dirpath: where the snapshots go.
    """

    def __init__(self, batch: int, dirpath: str) -> None:
        self.batch = batch
        self.dirpath = Path(dirpath)
        self.seen = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        names = {self.batch - 1: "before.pt", self.batch: "after.pt", self.batch + 1: "next.pt"}
        if self.seen in names:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            optimizer = trainer.optimizers[0]
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            torch.save({
                "model": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "optimizer": copy.deepcopy(optimizer.state_dict()),
                "scheduler": copy.deepcopy(scheduler.state_dict()),
                "global_step": trainer.global_step,
                "nonfinite_skipped": getattr(pl_module, "nonfinite_skipped", None),
            }, self.dirpath / names[self.seen])
        self.seen += 1


class SavePredictions(Callback):
    """Collects what ``predict`` returns, batch by batch, with the batch's sample ids; saves it at the end.

    ``path`` gets ``{"ids": [str], "vectors": FloatTensor [N, H]}`` (torch.save), rows in prediction order.

    Args:
        path: the file to write.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.ids: list[str] = []
        self.vectors: list[torch.Tensor] = []

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx,
                             dataloader_idx: int = 0) -> None:
        self.ids += list(batch["ids"])
        self.vectors.append(outputs.detach().float().cpu())

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.save({"ids": self.ids, "vectors": torch.cat(self.vectors)}, self.path)


class StageProbe(Callback):
    """Saves to ``path`` what a stage starts from and its learning rates: the MEL factors (or the dense token
    embedding) and every other backbone weight at the start of training, and the learning rate of each step.

    Args:
        path: the ``torch.save`` file, written at the end of training.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.record: dict = {"lr": []}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record["start"] = {k: v.detach().clone() for k, v in pl_module.encoder.backbone.state_dict().items()}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx) -> None:
        self.record["lr"].append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record["end"] = {k: v.detach().clone() for k, v in pl_module.encoder.backbone.state_dict().items()}
        torch.save(self.record, self.path)
