"""The grid's files: ``grid.csv``, ``grid.md``, the PNG plots, and the scores sent to the run's loggers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from mlembed.encoder import PointEncoder
from mlembed.evaluation.grid import evaluate_grid
from mlembed.evaluation.result import GridResult
from mlembed.evaluation.task import Task
from mlembed.reporting.plots import write_plots
from mlembed.reporting.publish import publish


def run_grid(
    encoder: PointEncoder,
    tasks: Sequence[Task],
    out_dir: str | Path,
    *,
    logger=None,
    step: int | None = None,
    prefix: str = "grid",
    plots: bool = True,
    **grid: object,
) -> GridResult:
    """Evaluate the grid and write ``grid.csv``, ``grid.md`` and the PNG plots into ``out_dir``.

    Args:
        encoder: the model.
        tasks: what to score.
        out_dir: where the files go (created).
        logger: a Lightning logger (or a list of them) to log the table, plots and main scores to.
        step: the training step to log at.
        prefix: first part of the logger keys.
        plots: write the PNG plots.
        **grid: ``ranks``, ``depths``, ``dims``, ``bytes_per_float``, ``progress`` of ``evaluate_grid``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = evaluate_grid(encoder, tasks, **grid)
    result.seconds = time.perf_counter() - start
    result.write_csv(out / "grid.csv")
    result.write_markdown(out / "grid.md")
    images = write_plots(result, out) if plots else []
    if logger is not None:
        publish(result, logger, images=images, step=step, prefix=prefix)
    return result
