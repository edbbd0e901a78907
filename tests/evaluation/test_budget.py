"""The budget picker and the Pareto front."""

from __future__ import annotations

import itertools

import pytest

from mlembed.evaluation.budget import best_within_budget, describe_pick, pareto_front
from mlembed.evaluation.result import PointScore


def grid_points() -> list[PointScore]:
    """A 3 x 2 x 3 grid whose score grows with every axis; params grow with rank and depth."""
    return [PointScore(rank, depth, dim, params=rank * 100 + depth * 1000, bytes_per_vector=4 * dim,
                       score=rank / 256 + depth / 10 + dim / 1000)
            for rank, depth, dim in itertools.product((64, 128, 256), (2, 6), (32, 64, 384))]


@pytest.mark.parametrize(("budget_params", "budget_bytes"), [(None, None), (20_000, None), (None, 256),
                                                              (13_000, 128), (8_400, 4 * 384)])
def test_pick_is_the_best_point_within_budget(budget_params, budget_bytes):
    points = grid_points()
    pick = best_within_budget(points, budget_params=budget_params, budget_bytes=budget_bytes)
    fits = [p for p in points if (budget_params is None or p.params <= budget_params)
            and (budget_bytes is None or p.bytes_per_vector <= budget_bytes)]
    assert pick is not None
    assert pick.params <= (budget_params or pick.params) and pick.bytes_per_vector <= (budget_bytes or 10**9)
    assert pick.score == max(p.score for p in fits)


def test_nothing_fits_a_tiny_budget():
    assert best_within_budget(grid_points(), budget_params=10) is None
    assert "no grid point fits" in describe_pick(None, budget_params=10, budget_bytes=None)


def test_ties_go_to_the_cheaper_point():
    cheap = PointScore(64, 2, 32, params=10, bytes_per_vector=128, score=0.5)
    dear = PointScore(128, 2, 32, params=20, bytes_per_vector=128, score=0.5)
    assert best_within_budget([dear, cheap]) == cheap


def test_pareto_front_is_monotone_and_undominated():
    points = grid_points()
    for cost in ("params", "bytes_per_vector"):
        front = pareto_front(points, cost)
        assert [getattr(p, cost) for p in front] == sorted(getattr(p, cost) for p in front)
        assert [p.score for p in front] == sorted(p.score for p in front)
        for p in front:
            assert not any(getattr(q, cost) <= getattr(p, cost) and q.score > p.score for q in points)
    with pytest.raises(ValueError, match="cost 'seconds'"):
        pareto_front(points, "seconds")
