"""GridEvaluation: the (rank x depth x dim) grid at the end of fit, every N steps, and on the starting model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from mlembed.artifact import PointGrid
from mlembed.demo.tasks import build_tasks
from mlembed.encoder import PointEncoder
from mlembed.evaluation.grid import evaluate_grid
from mlembed.evaluation.result import GridResult
from mlembed.evaluation.spread import SpreadEncoder, count_parameters
from mlembed.evaluation.suite import EvalCaps
from mlembed.evaluation.task import Task
from mlembed.reporting.comparison import compare
from mlembed.reporting.plots import write_arm_plots
from mlembed.reporting.report import run_grid


class GridEvaluation(Callback):
    """Scores the LightningModule's ``encoder`` (an ``mlembed.encoder.PointEncoder``) on the whole grid.

    Runs in eval mode without autograd (train mode is restored). With several processes (DDP, FSDP) every
    process takes part: the texts are split among them and the vectors gathered (mlembed.evaluation.spread),
    so the scores equal one process's; only global rank 0 writes files and logs. Files go to
    ``OUT/grid.{csv,md}`` and ``OUT/*.png`` after fit, ``OUT/baseline/`` for the starting model,
    ``OUT/step_<N>/`` for periodic runs, and ``OUT/comparison.{csv,md}`` when a baseline was taken.

    Args:
        tasks: task specs: ``KIND:PATH`` for your own files (``mlembed.evaluation.suite``) or the demo's task
            names (``lee``, ``wiki``, ``sphinx``, ``bitext``, ``dialogue``; ``mlembed.demo.tasks``).
        data_dir: the demo's output directory (holds ``eval/bitext.jsonl`` and ``eval/dialogue.jsonl``); read
            when the first grid runs, so a datamodule may build it during fit.
        caps: size limits of the evaluation sets.
        every_n_steps: also run the grid every N optimizer steps (0: only at the end of fit).
        out_dir: output directory (default: ``trainer.log_dir`` + ``/grid``).
        baseline: also score the starting model at fit start (after SVD init, before any step) and write the
            trained-vs-baseline comparison after fit.
        bytes_per_float: bytes of one stored vector component (4: fp32, 2: fp16) for the bytes-per-vector cost.
        ranks: ranks to score (default: the model's trained ranks).
        depths: depths to score (default: the trained depths).
        dims: dims to score (default: the trained dims).
        batch_size: encoder batch size.
        instructions: put the demo's instruction before dialogue queries, as training did.
        plots: write PNG plots.
        log: send the results to the trainer's loggers.
        control: after fit, also train the control arm (the same data, steps and learning rate with the axes
            and distillation off: a plain contrastive fine-tune, see mlembed.control) and score it,
            truncated as the baseline is; ``comparison.md`` and the ``arms_*.png`` plots then show the starting
            model, the plain fine-tune and the trained model side by side. Single device only.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        data_dir: str | None = None,
        caps: EvalCaps | None = None,
        every_n_steps: int = 0,
        out_dir: str | None = None,
        baseline: bool = False,
        bytes_per_float: int = 4,
        ranks: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        dims: Sequence[int] | None = None,
        batch_size: int = 64,
        instructions: bool = True,
        plots: bool = True,
        log: bool = True,
        control: bool = False,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"GridEvaluation every_n_steps ({every_n_steps}) must be >= 0")
        if bytes_per_float < 1:
            raise ValueError(f"GridEvaluation bytes_per_float ({bytes_per_float}) must be >= 1")
        self.task_specs, self.data_dir, self.caps = tuple(tasks), data_dir, caps or EvalCaps()
        self.every_n_steps, self.out_dir, self.baseline = every_n_steps, out_dir, baseline
        self.grid_args = {"ranks": ranks, "depths": depths, "dims": dims, "bytes_per_float": bytes_per_float}
        self.batch_size, self.instructions, self.plots, self.log = batch_size, instructions, plots, log
        self.control = control
        self._caps = self.caps
        """The caps of this fit: ``caps``, or their smoke-check version under ``fast_dev_run``."""
        self.results: dict[str, GridResult] = {}
        """``baseline``, ``step_<N>`` and ``final`` results of this fit."""
        self._tasks: list[Task] | None = None
        self._last_step = -1
        self._parameters: dict | None = None
        """(rank, depth) -> parameter count, taken before wrapping when there are several processes."""
        self._out = Path(out_dir or "grid")  # set from the trainer in setup

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Fail before training, not after it.
        if stage == "fit" and not isinstance(getattr(pl_module, "encoder", None), PointEncoder):
            raise TypeError(f"GridEvaluation needs a LightningModule whose ``encoder`` has points(), embed() and "
                            f"num_parameters() (mlembed.encoder.PointEncoder); {type(pl_module).__name__} lacks it")
        self._caps = self.caps
        if trainer.fast_dev_run:
            # Lightning's loops run N batches; the grids (and the control arm's steps, which follow max_steps)
            # check every part on a few texts per task instead of scoring the full sets.
            self._caps = self.caps.smoke(int(trainer.fast_dev_run))
            rank_zero_info("GridEvaluation: fast_dev_run scores a few texts per task (a check that every part "
                           "runs, not a measurement)")
        # trainer.log_dir broadcasts from rank 0: every rank must ask, here, not only rank 0 in _run (a hang).
        self._out = self.output_dir(trainer)
        if stage == "fit" and trainer.world_size > 1:
            # Counted now, before the strategy wraps (and, under FSDP, shards) the weights.
            pl_module.configure_model()
            encoder = pl_module.encoder
            trained = encoder.points()
            grid = PointGrid(ranks=tuple(self.grid_args["ranks"] or trained.ranks),
                             depths=tuple(self.grid_args["depths"] or trained.depths), dims=trained.dims)
            self._parameters = count_parameters(encoder, grid)
        if stage == "fit" and self.control and trainer.world_size > 1:
            raise ValueError("GridEvaluation control=true trains its control arm on one device; run on one device "
                             "or set control=false")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.baseline:
            self._run("baseline", trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end on one optimizer step; evaluate it once.
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self._run(f"step_{step:06d}", trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run("final", trainer, pl_module)
        if self.control and trainer.is_global_zero:
            from mlembed.control import train_control

            rank_zero_info("GridEvaluation: training the control arm (axes off, same data, steps and lr)")
            control, steps = train_control(trainer, pl_module)
            rank_zero_info(f"GridEvaluation: the control arm trained {steps} optimizer steps (3D-ML: "
                           f"{trainer.global_step})")
            self._run("control", trainer, control)
        if trainer.is_global_zero and "baseline" in self.results:
            comparison = compare(self.results["final"], self.results["baseline"], self.results.get("control"))
            written = comparison.write(self._out)
            if self.plots and comparison.control is not None:
                write_arm_plots(comparison.arms(), self._out)
            rank_zero_info(f"GridEvaluation: trained vs baseline in {written[1]}")

    @property
    def grid_dir(self) -> Path:
        """Where this fit's final grid is written (known once ``setup`` ran; no collective call)."""
        return self._out

    def output_dir(self, trainer: Trainer) -> Path:
        """Where the grid files go."""
        return Path(self.out_dir) if self.out_dir else Path(trainer.log_dir or trainer.default_root_dir) / "grid"

    def _run(self, name: str, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._tasks is None:
            self._tasks = build_tasks(self.task_specs, data_dir=self.data_dir, caps=self._caps,
                                      batch_size=self.batch_size, instructions=self.instructions)
        encoder = self._encoder(trainer, pl_module)
        if not trainer.is_global_zero:  # the same calls as rank 0 (its share of every forward), no files
            self.results[name] = evaluate_grid(encoder, self._tasks, progress=False, **self.grid_args)
            return
        out = self._out if name == "final" else self._out / name
        loggers = trainer.loggers if self.log and trainer.loggers else None
        result = run_grid(encoder, self._tasks, out, logger=loggers, step=trainer.global_step, plots=self.plots,
                          prefix="grid" if name == "final" else f"grid_{name.split('_')[0]}", **self.grid_args)
        self.results[name] = result
        best = max(result.points(), key=lambda p: p.score)
        rank_zero_info(f"GridEvaluation[{name}]: {len(result.points())} points in {result.seconds:.1f} s, "
                       f"best {best.label()} score {best.score:.4f}; files in {out}")

    def _encoder(self, trainer: Trainer, pl_module: LightningModule):
        """What to score: the module's encoder, spread over the processes when there are several."""
        if trainer.world_size == 1:
            return pl_module.encoder
        strategy = trainer.strategy
        sharded = trainer.model if trainer.model is not pl_module else None  # FSDP root: its forward gathers
        return SpreadEncoder(pl_module.encoder, world_size=trainer.world_size, process_index=trainer.global_rank,
                             all_gather=strategy.all_gather, device=pl_module.encoder.device,
                             forward=sharded if _is_fsdp(sharded) else None,
                             parameters=self._parameters)


def _is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)
