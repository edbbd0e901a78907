"""The grid: its shape, dim prefixes equal to direct truncation, one pass per (rank, depth), files and plots."""

from __future__ import annotations

import csv

import pytest
import torch

from mlembed.evaluation.bitext import BitextTask
from mlembed.evaluation.grid import evaluate_grid
from mlembed.evaluation.sts import STSTask
from mlembed.reporting.report import run_grid
from tests.evaluation.conftest import ENGLISH, LANGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_tasks() -> list:
    src = [en for texts in LANGS.values() for en in ENGLISH[: len(texts)]]
    tgt = [t for texts in LANGS.values() for t in texts]
    langs = [lang for lang, texts in LANGS.items() for _ in texts]
    sts = STSTask(ENGLISH[:4], LANGS["de"][:4], [3.0, 1.0, 2.0, 0.5], name="toy_sts")
    return [BitextTask(src, tgt, langs), sts]


class PrefixOnly:
    """Wraps an encoder so that it returns only the first ``dim`` features (direct truncation; None: all).

    It has no ``embed_layers``, so the grid calls ``embed`` once per (rank, depth).
    """

    def __init__(self, encoder, dim: int | None = None) -> None:
        self.encoder, self.dim = encoder, dim

    def points(self):
        return self.encoder.points()

    def embed(self, texts, **kw):
        return self.encoder.embed(texts, **kw)[:, : self.dim]

    def num_parameters(self, **kw):
        return self.encoder.num_parameters(**kw)


def test_grid_has_one_row_per_point_and_metric(tiny_encoder):
    result = evaluate_grid(tiny_encoder, small_tasks(), progress=False)
    points = tiny_encoder.points()
    n_points = len(points.ranks) * len(points.depths) * len(points.dims)
    for task, metric in [("bitext", "accuracy"), ("bitext", "accuracy/de"), ("toy_sts", "spearman")]:
        rows = [r for r in result.rows if (r.task, r.metric) == (task, metric)]
        assert len(rows) == n_points
        assert {(r.rank, r.depth, r.dim) for r in rows} == {
            (k, depth, d) for k in points.ranks for depth in points.depths for d in points.dims}
    assert len(result.points()) == n_points
    assert all(r.bytes_per_vector == 4 * r.dim for r in result.rows)


def test_one_encoder_pass_per_rank_depth_and_task(tiny_encoder):
    evaluate_grid(PrefixOnly(tiny_encoder), small_tasks(), progress=False)
    points = tiny_encoder.points()
    assert len(tiny_encoder.calls) == len(points.ranks) * len(points.depths) * 2
    # Distinct texts only: the English sources repeat across the 3 languages.
    assert tiny_encoder.calls[0][0] == len(set(ENGLISH)) + sum(len(t) for t in LANGS.values())


def test_embed_layers_serves_all_depths_of_a_rank_in_one_pass(tiny_encoder):
    tasks = small_tasks()
    shared = evaluate_grid(tiny_encoder, tasks, progress=False)
    points = tiny_encoder.points()
    assert tiny_encoder.calls == []
    assert [(rank, depths) for _, rank, depths in tiny_encoder.layer_calls] == [
        (rank, points.depths) for rank in points.ranks for _ in tasks]
    per_depth = evaluate_grid(PrefixOnly(tiny_encoder), tasks, progress=False)
    assert [r.value for r in shared.rows] == pytest.approx([r.value for r in per_depth.rows], abs=1e-6)


def test_dim_prefixes_match_direct_truncation(tiny_encoder):
    tasks = small_tasks()
    grid = evaluate_grid(tiny_encoder, tasks, ranks=[8, 32], depths=[1, 3], progress=False)
    for dim in (8, 16):
        direct = evaluate_grid(PrefixOnly(tiny_encoder, dim), tasks, ranks=[8, 32], depths=[1, 3], dims=[None],
                               progress=False)
        for row in direct.rows:
            assert grid.value((row.rank, row.depth, dim), row.task, row.metric) == pytest.approx(row.value, abs=1e-6)


def test_grid_values_depend_on_rank_and_depth(tiny_encoder):
    result = evaluate_grid(tiny_encoder, small_tasks()[1:], dims=[32], progress=False)
    values = {r.value for r in result.rows if r.metric == "spearman"}
    assert len(values) > 1  # the double really embeds differently per (rank, depth)


def test_params_come_from_the_encoder(tiny_encoder):
    result = evaluate_grid(tiny_encoder, small_tasks()[1:], progress=False)
    for p in result.points():
        assert p.params == tiny_encoder.num_parameters(rank=p.rank, depth=p.depth)
    assert len({p.params for p in result.points()}) == 9  # 3 ranks x 3 depths, all different


def test_train_mode_restored_and_eval_mode_during_grid(tiny_encoder):
    tiny_encoder.train()
    evaluate_grid(tiny_encoder, small_tasks(), ranks=[8], depths=[1], progress=False)
    assert tiny_encoder.training
    assert tiny_encoder.modes_seen and not any(tiny_encoder.modes_seen)
    assert torch.is_grad_enabled()  # autograd is back on


def test_bytes_per_float_fp16(tiny_encoder):
    result = evaluate_grid(tiny_encoder, small_tasks()[1:], ranks=[8], depths=[1], bytes_per_float=2,
                           progress=False)
    assert {(r.dim, r.bytes_per_vector) for r in result.rows} == {(8, 16), (16, 32), (32, 64)}


def test_run_grid_writes_csv_markdown_and_pngs(tiny_encoder, tmp_path):
    result = run_grid(tiny_encoder, small_tasks(), tmp_path / "out", progress=False)
    with (tmp_path / "out" / "grid.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["rank", "depth", "dim", "params", "bytes_per_vector", "task", "metric", "value", "score"]
    assert len(rows) == len(result.rows)
    scores = {p.point: p.score for p in result.points()}
    first = rows[0]
    assert float(first["score"]) == pytest.approx(scores[(int(first["rank"]), int(first["depth"]), int(first["dim"]))])
    markdown = (tmp_path / "out" / "grid.md").read_text()
    assert "## score (mean of the main metrics)" in markdown and "## bitext: accuracy" in markdown
    assert markdown.count("\n| 8 | ") == 3 * 3  # rank 8 x 3 depths, in each of the 3 tables
    for name in ("score_vs_dim", "score_vs_rank", "pareto_params", "pareto_bytes"):
        data = (tmp_path / "out" / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert result.seconds is not None and result.seconds > 0


def test_point_score_is_the_mean_of_main_metrics(tiny_encoder):
    result = evaluate_grid(tiny_encoder, small_tasks(), ranks=[16], depths=[2], dims=[16], progress=False)
    (point,) = result.points()
    expected = (result.value((16, 2, 16), "bitext", "accuracy") + result.value((16, 2, 16), "toy_sts", "spearman")) / 2
    assert point.score == pytest.approx(expected)


def test_grid_on_the_real_encoder():
    from tests.helpers import tiny_module

    module = tiny_module("bert", rank=32, layers=2)
    points = module.encoder.points()
    result = evaluate_grid(module.encoder, small_tasks(), progress=False)
    assert len(result.points()) == len(points.ranks) * len(points.depths) * len(points.dims)
    assert {r.params for r in result.rows} == {module.encoder.num_parameters(rank=k, depth=depth)
                                              for k in points.ranks for depth in points.depths}
