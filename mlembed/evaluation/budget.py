"""Picking a deployment point: the Pareto front of score vs cost, and the best point within a budget."""

from __future__ import annotations

from collections.abc import Sequence

from mlembed.evaluation.result import PointScore

COSTS = ("params", "bytes_per_vector")


def pareto_front(points: Sequence[PointScore], cost: str = "params") -> list[PointScore]:
    """Points no other point beats on both score and ``cost`` (ascending cost, so scores rise along it)."""
    if cost not in COSTS:
        raise ValueError(f"cost {cost!r}: use one of {COSTS}")
    front: list[PointScore] = []
    for point in sorted(points, key=lambda p: (getattr(p, cost), -p.score)):
        if not front or point.score > front[-1].score:
            front.append(point)
    return front


def best_within_budget(
    points: Sequence[PointScore], *, budget_params: int | None = None, budget_bytes: int | None = None
) -> PointScore | None:
    """The highest-scoring point with ``params <= budget_params`` and ``bytes_per_vector <= budget_bytes``.

    Ties go to the cheaper point (fewer parameters, then fewer bytes). None when no point fits.
    """
    fits = [p for p in points
            if (budget_params is None or p.params <= budget_params)
            and (budget_bytes is None or p.bytes_per_vector <= budget_bytes)]
    if not fits:
        return None
    return max(fits, key=lambda p: (p.score, -p.params, -p.bytes_per_vector))


def describe_pick(pick: PointScore | None, *, budget_params: int | None, budget_bytes: int | None) -> str:
    """One line for the console: the chosen point and its cost, or why there is none."""
    budget = ", ".join(part for part in (
        f"params <= {budget_params:,}" if budget_params is not None else "",
        f"bytes/vector <= {budget_bytes:,}" if budget_bytes is not None else "") if part)
    if pick is None:
        return f"no grid point fits the budget ({budget})"
    return (f"best within budget ({budget}): rank={pick.rank} depth={pick.depth} dim={pick.dim} "
            f"score={pick.score:.4f} params={pick.params:,} bytes/vector={pick.bytes_per_vector:,}")
