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


@dataclass(frozen=True)
class Retention:
    """Score retained when one axis is reduced and the others stay full."""

    axis: str
    point: Point
    trained: float
    trained_ratio: float
    baseline: float
    baseline_ratio: float


@dataclass
class Comparison:
    """Per-point scores of both grids and the retention of each axis.

    Args:
        rows: ``(trained point, baseline score)`` for every point both grids have.
        retention: one entry per axis (rank, depth, dim).
    """

    rows: list[tuple[PointScore, float]]
    retention: list[Retention]

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``comparison.csv`` and ``comparison.md`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rank", "depth", "dim", "params", "bytes_per_vector", "trained", "baseline", "delta"])
            for p, base in self.rows:
                writer.writerow(["" if v is None else v for v in p.point]
                                + [p.params, p.bytes_per_vector, p.score, base, p.score - base])
        (out / "comparison.md").write_text(self.to_markdown(), encoding="utf-8")
        return [out / "comparison.csv", out / "comparison.md"]

    def to_markdown(self) -> str:
        lines = ["# Trained vs baseline (the starting model: SVD / layer / prefix truncation)", "",
                 "## Retention (score at the reduced point / score at the full point)", "",
                 "| axis | point | trained | trained retention | baseline | baseline retention |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r.axis} | {_label(r.point)} | {r.trained:.4f} | {r.trained_ratio:.1%} | {r.baseline:.4f} | "
                  f"{r.baseline_ratio:.1%} |" for r in self.retention]
        lines += ["", "## Every point", "", "| rank | depth | dim | params | trained | baseline | delta |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {_cell(p.rank)} | {_cell(p.depth)} | {_cell(p.dim)} | {p.params:,} | {p.score:.4f} | "
                  f"{base:.4f} | {p.score - base:+.4f} |" for p, base in self.rows]
        return "\n".join(lines) + "\n"


def compare(trained: GridResult, baseline: GridResult) -> Comparison:
    """Pair the two grids' points and compute the retention of each axis in both."""
    base = {p.point: p.score for p in baseline.points()}
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
        retention.append(Retention(axis, point, trained_scores[point], _ratio(trained_scores, point, full),
                                   base[point], _ratio(base, point, full)))
    return Comparison(rows, retention)


def _ratio(scores: dict[Point, float], point: Point, full: Point) -> float:
    return scores[point] / scores[full] if scores[full] else float("nan")


def _label(point: Point) -> str:
    return f"rank {_cell(point[0])}, depth {_cell(point[1])}, dim {_cell(point[2])}"


def _cell(value) -> str:
    return "full" if value is None else str(value)
