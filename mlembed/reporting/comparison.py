"""Trained model vs its untrained starting point, point by point, and how much each axis retains.

The starting point (after SVD init, before any step) is the paper's ablation baseline at every point: its ranks
are a direct SVD truncation of the original embedding, its depths plain layer truncation, its dims plain prefix
truncation. Retention = score at a reduced point / score at the full point.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mlembed.evaluation.result import GridResult, Point, PointScore, axis_order

REDUCED = {"rank": 64, "depth": 2, "dim": 64}
"""The reduced value of each axis whose retention is reported (the smallest one when a grid lacks it)."""
KEY_POINTS = {"full": (None, None, None), "rank 32": (32, None, None), "rank 64": (64, None, None),
              "depth 2": (None, 2, None), "dim 64": (None, None, 64), "rank 64, depth 2, dim 64": (64, 2, 64)}
"""Points reported side by side (None: the axis at its full value); those a grid lacks are left out."""


@dataclass(frozen=True)
class Retention:
    """Score retained when one axis is reduced and the others stay full."""

    axis: str
    point: Point
    trained: float
    trained_ratio: float
    baseline: float
    baseline_ratio: float
    control: float | None = None
    control_ratio: float | None = None


@dataclass
class Comparison:
    """Per-point scores of the grids and the retention of each axis.

    Args:
        rows: ``(trained point, baseline score)`` for every point both grids have.
        retention: one entry per axis (rank, depth, dim).
        trained, baseline, control: the whole grids (control: None without a control arm).
    """

    rows: list[tuple[PointScore, float]]
    retention: list[Retention]
    trained: GridResult | None = None
    baseline: GridResult | None = None
    control: GridResult | None = None

    def arms(self) -> list[tuple[str, GridResult]]:
        """``(name, grid)`` of each arm, in the order reported: starting model, plain fine-tune, 3D-ML."""
        named = [("starting model", self.baseline), ("plain fine-tune", self.control), ("3D-ML", self.trained)]
        return [(name, grid) for name, grid in named if grid is not None]

    def key_points(self) -> dict[str, Point]:
        """The :data:`KEY_POINTS` this grid has, with full values filled in."""
        ranks, depths, dims = self.trained.axes()
        full = (ranks[-1], depths[-1], dims[-1])
        out = {}
        for name, point in KEY_POINTS.items():
            filled = tuple(full[i] if v is None else v for i, v in enumerate(point))
            if all(v in values for v, values in zip(filled, (ranks, depths, dims))) and (name == "full" or filled != full):
                out[name] = filled
        return out

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``comparison.csv`` and ``comparison.md`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            control = {p.point: p for p in self.control.points()} if self.control is not None else {}
            writer.writerow(["rank", "depth", "dim", "params", "bytes_per_vector", "trained", "baseline", "delta"]
                            + (["control", "delta_control"] if control else []))
            for p, base in self.rows:
                extra = [control[p.point].score, p.score - control[p.point].score] if p.point in control else []
                writer.writerow(["" if v is None else v for v in p.point]
                                + [p.params, p.bytes_per_vector, p.score, base, p.score - base] + extra)
        (out / "comparison.md").write_text(self.to_markdown(), encoding="utf-8")
        return [out / "comparison.csv", out / "comparison.md"]

    def to_markdown(self) -> str:
        lines = ["# Trained vs baseline (the starting model: SVD / layer / prefix truncation)", ""]
        if self.control is not None:
            lines += self._side_by_side()
        lines += ["## Retention (score at the reduced point / score at the full point)", "",
                  "| axis | point | trained | trained retention | baseline | baseline retention |"
                  + (" control | control retention |" if self.control is not None else ""),
                  "|---|---|---|---|---|---|" + ("---|---|" if self.control is not None else "")]
        lines += [f"| {r.axis} | {_label(r.point)} | {r.trained:.4f} | {r.trained_ratio:.1%} | {r.baseline:.4f} | "
                  f"{r.baseline_ratio:.1%} |" + (f" {r.control:.4f} | {r.control_ratio:.1%} |"
                                                 if r.control is not None else "") for r in self.retention]
        control = {p.point: p.score for p in self.control.points()} if self.control is not None else {}
        lines += ["", "## Every point", "", "| rank | depth | dim | params | trained | baseline | delta |"
                  + (" control | delta control |" if control else ""), "|---|---|---|---|---|---|---|"
                  + ("---|---|" if control else "")]
        lines += [f"| {_cell(p.rank)} | {_cell(p.depth)} | {_cell(p.dim)} | {p.params:,} | {p.score:.4f} | "
                  f"{base:.4f} | {p.score - base:+.4f} |"
                  + (f" {control[p.point]:.4f} | {p.score - control[p.point]:+.4f} |" if p.point in control else "")
                  for p, base in self.rows]
        return "\n".join(lines) + "\n"


    def _side_by_side(self) -> list[str]:
        """Tables of the key points: each arm's out-of-domain, in-domain and per-task scores."""
        arms = self.arms()
        scores = {name: {p.point: p for p in grid.points()} for name, grid in arms}
        header = "| point | " + " | ".join(name for name, _ in arms) + " | 3D-ML - start | 3D-ML - plain |"
        rule = "|---|" + "---|" * (len(arms) + 2)
        out = ["Three arms at each key point: the starting model, a plain contrastive fine-tune (same data, steps and",
               "learning rate, axes off), and the 3D-ML run, each truncated the same way.", ""]
        in_domain = self.trained.in_domain
        sections = [("out-of-domain score", lambda p: p.domain_score(False))] if set(
            self.trained.main_metrics) - in_domain else []
        sections += [("in-domain score", lambda p: p.domain_score(True))] if in_domain else []
        sections += [(f"{task}: {metric}", lambda p, t=task: p.tasks.get(t))
                     for task, metric in self.trained.main_metrics.items()]
        for title, value in sections:
            out += [f"## {title}", "", header, rule]
            for name, point in self.key_points().items():
                cells = [value(scores[arm][point]) if point in scores[arm] else None for arm, _ in arms]
                if any(c is None for c in cells):
                    continue
                out.append(f"| {name} | " + " | ".join(f"{c:.4f}" for c in cells)
                           + f" | {cells[-1] - cells[0]:+.4f} | {cells[-1] - cells[-2]:+.4f} |")
            out.append("")
        return out


def compare(trained: GridResult, baseline: GridResult, control: GridResult | None = None) -> Comparison:
    """Pair the grids' points and compute the retention of each axis in each."""
    base = {p.point: p.score for p in baseline.points()}
    plain = {p.point: p.score for p in control.points()} if control is not None else {}
    rows = [(p, base[p.point]) for p in trained.points() if p.point in base]
    if not rows:
        raise ValueError("the trained and baseline grids share no (rank, depth, dim) point")
    trained_scores = {p.point: p.score for p, _ in rows}
    ranks, depths, dims = (sorted({pt[i] for pt in trained_scores}, key=axis_order) for i in range(3))
    full = (ranks[-1], depths[-1], dims[-1])
    retention = []
    for i, (axis, values) in enumerate(zip(REDUCED, (ranks, depths, dims))):
        reduced = REDUCED[axis] if REDUCED[axis] in values else values[0]
        point = tuple(reduced if j == i else full[j] for j in range(3))
        if point == full or point not in trained_scores:
            continue
        has_control = point in plain and full in plain
        retention.append(Retention(axis, point, trained_scores[point], _ratio(trained_scores, point, full),
                                   base[point], _ratio(base, point, full),
                                   plain[point] if has_control else None,
                                   _ratio(plain, point, full) if has_control else None))
    return Comparison(rows, retention, trained, baseline, control)


def _ratio(scores: dict[Point, float], point: Point, full: Point) -> float:
    return scores[point] / scores[full] if scores[full] else float("nan")


def _label(point: Point) -> str:
    return f"rank {_cell(point[0])}, depth {_cell(point[1])}, dim {_cell(point[2])}"


def _cell(value) -> str:
    return "full" if value is None else str(value)
