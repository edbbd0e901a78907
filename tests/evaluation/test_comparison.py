"""Trained vs baseline: paired points and the retention of each axis."""

from __future__ import annotations

import itertools

import pytest

from mlembed.evaluation.result import GridResult, GridRow
from mlembed.reporting.comparison import compare


def grid(score) -> GridResult:
    rows = [GridRow(rank, depth, dim, rank * 10 + depth, dim * 4, "t", "m", score(rank, depth, dim))
            for rank, depth, dim in itertools.product((64, 128), (1, 2, 6), (64, 384))]
    return GridResult(rows, {"t": "m"})


def test_retention_of_each_axis_in_both_grids(tmp_path):
    def trained(rank, depth, dim):
        return 0.8 * (0.9 if rank == 64 else 1) * (0.75 if depth == 2 else 1) * (0.5 if dim == 64 else 1)

    def baseline(rank, depth, dim):
        return 0.4 * (0.5 if rank == 64 else 1) * (0.25 if depth == 2 else 1) * (0.25 if dim == 64 else 1)

    comparison = compare(grid(trained), grid(baseline))
    ratios = {r.axis: (r.point, r.trained_ratio, r.baseline_ratio) for r in comparison.retention}
    assert ratios["rank"] == ((64, 6, 384), pytest.approx(0.9), pytest.approx(0.5))
    assert ratios["depth"] == ((128, 2, 384), pytest.approx(0.75), pytest.approx(0.25))
    assert ratios["dim"] == ((128, 6, 64), pytest.approx(0.5), pytest.approx(0.25))
    assert len(comparison.rows) == 12

    csv_path, md_path = comparison.write(tmp_path)
    assert len(csv_path.read_text().splitlines()) == 13
    markdown = md_path.read_text()
    assert "| rank | rank 64, depth 6, dim 384 | 0.7200 | 90.0% | 0.2000 | 50.0% |" in markdown


def test_disjoint_grids_fail_clearly():
    other = GridResult([GridRow(8, 1, 8, 1, 32, "t", "m", 0.5)], {"t": "m"})
    with pytest.raises(ValueError, match="share no"):
        compare(grid(lambda *a: 1.0), other)
