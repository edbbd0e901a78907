"""Send a grid's results to Lightning loggers: a table and the plots to wandb, a few scalars to the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from lightning.pytorch.loggers import Logger, WandbLogger

from mlembed.evaluation.result import GridResult, GridRow


def publish(
    result: GridResult,
    logger: Logger | Sequence[Logger],
    *,
    images: Sequence[Path] = (),
    step: int | None = None,
    prefix: str = "grid",
) -> None:
    """Log ``result`` to each logger.

    wandb gets the whole grid as a table (``<prefix>/table``), the plots (``<prefix>/plots``) and the score at
    the full point. Other loggers get only scalars, and few of them (a wide grid would bury the training
    curves): each task's main metric and the point score at every point, as
    ``<prefix>/<task>/<metric>@r{k}_l{l}_d{d}`` and ``<prefix>/score@r{k}_l{l}_d{d}``.
    """
    for each in logger if isinstance(logger, Sequence) else [logger]:
        if isinstance(each, WandbLogger):
            _to_wandb(result, each, images, step, prefix)
        else:
            each.log_metrics(main_scalars(result, prefix), step=step)


def main_scalars(result: GridResult, prefix: str = "grid") -> dict[str, float]:
    """``{key: value}`` of each task's main metric and of the score at every point."""
    scalars = {}
    for point in result.points():
        suffix = point_suffix(*point.point)
        scalars.update({f"{prefix}/{task}/{result.main_metrics[task]}@{suffix}": v for task, v in point.tasks.items()})
        scalars[f"{prefix}/score@{suffix}"] = point.score
    # The full point's score under one fixed name: what sweeps optimise, whichever axes a run trained.
    scalars[f"{prefix}/score"] = full_point(result).score
    return scalars


def full_point(result: GridResult):
    """The largest point of the grid (full rank, depth and dim)."""
    return max(result.points(), key=lambda p: (p.params, p.bytes_per_vector))


def point_suffix(rank: int | None, depth: int | None, dim: int | None) -> str:
    """``r64_l2_d128``; ``full`` stands for an axis at its full value (e.g. ``rfull`` when MEL is off)."""
    return "_".join(f"{axis}{'full' if v is None else v}" for axis, v in (("r", rank), ("l", depth), ("d", dim)))


def _to_wandb(result: GridResult, logger: WandbLogger, images: Sequence[Path], step: int | None, prefix: str):
    scores = {p.point: p.score for p in result.points()}
    columns = [f.name for f in fields(GridRow)] + ["score"]
    data = [[getattr(row, c) for c in columns[:-1]] + [scores[(row.rank, row.depth, row.dim)]] for row in result.rows]
    logger.log_table(key=f"{prefix}/table", columns=columns, data=data, step=step)
    if images:
        logger.log_image(key=f"{prefix}/plots", images=[str(p) for p in images], step=step,
                         caption=[Path(p).stem for p in images])
    logger.log_metrics({f"{prefix}/score": full_point(result).score}, step=step)
