"""The grid's result: one row per (rank, depth, dim, task, metric), a score per point, CSV and markdown."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mlembed.artifact import Point


@dataclass(frozen=True)
class GridRow:
    """One metric of one task at one (rank, depth, dim) point."""

    rank: int | None
    depth: int | None
    dim: int | None
    params: int
    bytes_per_vector: int
    task: str
    metric: str
    value: float


@dataclass(frozen=True)
class PointScore:
    """A point's cost and its ``score``: the mean of each task's main metric."""

    rank: int | None
    depth: int | None
    dim: int | None
    params: int
    bytes_per_vector: int
    score: float
    tasks: dict[str, float] = field(default_factory=dict, compare=False)
    in_domain: frozenset[str] = field(default_factory=frozenset, compare=False)
    """Names of the tasks whose texts come from the training data's sources."""

    def domain_score(self, in_domain: bool) -> float | None:
        """Mean main metric of the in-domain (or the out-of-domain) tasks; None when there are none."""
        values = [v for task, v in self.tasks.items() if (task in self.in_domain) == in_domain]
        return sum(values) / len(values) if values else None

    @property
    def point(self) -> Point:
        return Point(self.rank, self.depth, self.dim)

    def label(self) -> str:
        """``r64 l2 d128`` (``r-`` when MEL is off)."""
        return f"r{_text(self.rank) or '-'} l{_text(self.depth)} d{_text(self.dim)}"


@dataclass
class GridResult:
    """All rows of a grid run and each task's main metric.

    Args:
        rows: every (point, task, metric) value.
        main_metrics: task name -> the metric that enters the point score.
        seconds: wall time of the evaluation (None when unknown).
        in_domain: names of the tasks held out from the training data's sources; the others are out of domain.
    """

    rows: list[GridRow]
    main_metrics: dict[str, str]
    seconds: float | None = None
    in_domain: frozenset[str] = frozenset()

    def points(self) -> list[PointScore]:
        """One PointScore per point, in row order."""
        grouped: dict[Point, dict[str, float]] = defaultdict(dict)
        costs: dict[Point, tuple[int, int]] = {}
        for row in self.rows:
            point = (row.rank, row.depth, row.dim)
            costs[point] = (row.params, row.bytes_per_vector)
            if self.main_metrics.get(row.task) == row.metric:
                grouped[point][row.task] = row.value
        return [PointScore(*point, *costs[point], score=sum(t.values()) / max(len(t), 1), tasks=dict(t),
                           in_domain=self.in_domain)
                for point, t in ((p, grouped[p]) for p in costs)]

    def value(self, point: Point, task: str, metric: str) -> float:
        """One metric value; KeyError when the grid has no such row."""
        for row in self.rows:
            if (row.rank, row.depth, row.dim) == point and row.task == task and row.metric == metric:
                return row.value
        raise KeyError(f"no {task}/{metric} at point {point}")

    def axes(self) -> tuple[list, list, list]:
        """The distinct ranks, depths and dims, ascending (None, the full value, last)."""
        return tuple(sorted({getattr(r, axis) for r in self.rows}, key=axis_order) for axis in ("rank", "depth", "dim"))

    def write_csv(self, path: str | Path) -> Path:
        """``rank, depth, dim, params, bytes_per_vector, task, metric, value, score`` (score: the point's)."""
        path = Path(path)
        scores = {p.point: p.score for p in self.points()}
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([f.name for f in fields(GridRow)] + ["score"])
            for row in self.rows:
                values = [_text(v) if v is None else v for v in asdict(row).values()]
                writer.writerow(values + [scores[(row.rank, row.depth, row.dim)]])
        return path

    def to_markdown(self) -> str:
        """Tables of the score, then of each task's main metric: one row per (rank, depth), one column per dim."""
        points = self.points()
        sections = [("score (mean of the main metrics)", {p.point: p.score for p in points})]
        if self.in_domain and set(self.main_metrics) - self.in_domain:
            sections += [(f"{name} score (mean of {', '.join(sorted(tasks))})",
                          {p.point: p.domain_score(domain) for p in points})
                         for name, domain, tasks in (("out-of-domain", False, set(self.main_metrics) - self.in_domain),
                                                     ("in-domain", True, self.in_domain))]
        for task, metric in self.main_metrics.items():
            values = {(r.rank, r.depth, r.dim): r.value for r in self.rows if r.task == task and r.metric == metric}
            sections.append((f"{task}: {metric}", values))
        return "\n".join(_table(title, values, self.axes()) for title, values in sections)

    def write_markdown(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text("# Evaluation grid (rank x depth x dim)\n\n" + self.to_markdown(), encoding="utf-8")
        return path


def _table(title: str, values: dict[Point, float], axes: tuple[list, list, list]) -> str:
    ranks, depths, dims = axes
    lines = [f"## {title}", "", "| rank | depth | " + " | ".join(f"d{_text(d)}" for d in dims) + " |",
             "|---|---|" + "---|" * len(dims)]
    for rank in ranks:
        for depth in depths:
            cells = [values.get((rank, depth, dim)) for dim in dims]
            lines.append(f"| {_text(rank) or 'full'} | {_text(depth)} | "
                         + " | ".join("" if v is None else f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def _text(value) -> str:
    return "" if value is None else str(value)


def axis_order(value) -> tuple[int, int]:
    """Sort key of axis values: ascending, with None (the full value) last."""
    return (1, 0) if value is None else (0, value)
