"""GridEvaluation inside a real Trainer.fit, and publishing results to loggers."""

from __future__ import annotations

import csv

import pytest
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

from mlembed.callbacks.grid import GridEvaluation
from mlembed.demo.tasks import build_tasks
from mlembed.evaluation.grid import evaluate_grid
from mlembed.evaluation.suite import EvalCaps
from mlembed.reporting.publish import main_scalars, publish
from tests.evaluation.conftest import ENGLISH, LANGS

PAIRS = list(zip(ENGLISH, LANGS["de"])) + list(zip(ENGLISH, LANGS["fr"]))


class ModeProbe(Callback):
    """Records whether the module is in train mode when each training batch starts."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append(pl_module.training)


def fit(module, callback, tmp_path, **trainer_kw):
    loader = DataLoader(PAIRS, batch_size=4, collate_fn=lambda b: ([q for q, _ in b], [p for _, p in b]))
    probe = ModeProbe()
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, callbacks=[callback, probe],
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      **trainer_kw)
    trainer.fit(module, train_dataloaders=loader)
    return trainer, probe


def test_grid_after_fit_with_baseline_and_periodic_runs(tiny_encoder, demo_dir, tmp_path):
    callback = GridEvaluation(tasks=["bitext", "dialogue"], data_dir=str(demo_dir), baseline=True, every_n_steps=1,
                              caps=EvalCaps(max_pairs_per_language=4), ranks=[8, 32], depths=[1, 3])
    trainer, probe = fit(tiny_encoder, callback, tmp_path, max_steps=2,
                         logger=CSVLogger(tmp_path, name="logs"))
    out = callback.output_dir(trainer)
    assert out == tmp_path / "logs" / "version_0" / "grid"
    assert sorted(callback.results) == ["baseline", "final", "step_000001", "step_000002"]
    for folder in (out, out / "baseline", out / "step_000001"):
        assert (folder / "grid.csv").is_file() and (folder / "grid.md").is_file()
        assert (folder / "pareto_params.png").stat().st_size > 1000
    assert (out / "comparison.md").read_text().startswith("# Trained vs baseline")
    assert len((out / "comparison.csv").read_text().splitlines()) == 1 + 2 * 2 * 3

    # The baseline is the starting model: training changed the weights, so the scores differ somewhere.
    baseline, final = callback.results["baseline"], callback.results["final"]
    assert [r.value for r in baseline.rows] != [r.value for r in final.rows]
    assert probe.modes == [True, True]  # evaluation between steps gave train mode back
    assert tiny_encoder.modes_seen and not any(tiny_encoder.modes_seen)

    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as handle:
        columns = next(csv.reader(handle))
    assert "grid/score@r8_l1_d8" in columns and "grid/dialogue/ndcg@10@r32_l3_d32" in columns
    assert "grid_baseline/score@r8_l1_d8" in columns and "grid_step/bitext/accuracy@r8_l3_d16" in columns


def test_fast_dev_run_without_baseline_writes_only_the_final_grid(tiny_encoder, demo_dir, tmp_path):
    callback = GridEvaluation(tasks=["bitext"], data_dir=str(demo_dir), out_dir=str(tmp_path / "eval"),
                              ranks=[32], depths=[3], plots=False)
    fit(tiny_encoder, callback, tmp_path, fast_dev_run=True, logger=False)
    assert sorted(callback.results) == ["final"]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["grid.csv", "grid.md"]


def test_module_without_the_protocol_fails_clearly(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    with pytest.raises(TypeError, match="mlembed.encoder.PointEncoder"):
        fit(BoringModel(), GridEvaluation(tasks=["lee"]), tmp_path, fast_dev_run=True)


class RecordingWandb(WandbLogger):
    """A WandbLogger that records what it is asked to log instead of starting a run."""

    def __init__(self) -> None:
        super().__init__(offline=True)
        self.logged: list[tuple[str, dict]] = []

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.logged.append(("table", {"key": key, "columns": columns, "rows": len(data), "step": step}))

    def log_image(self, key, images, step=None, **kwargs):
        self.logged.append(("image", {"key": key, "images": images, "step": step, **kwargs}))

    def log_metrics(self, metrics, step=None):
        self.logged.append(("metrics", dict(metrics)))


def test_wandb_gets_a_table_and_the_plots(tiny_encoder, demo_dir, tmp_path):
    tasks = build_tasks(["bitext"], data_dir=demo_dir)
    result = evaluate_grid(tiny_encoder, tasks, ranks=[8], depths=[1, 2], progress=False)
    logger = RecordingWandb()
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    publish(result, [logger], images=images, step=7)
    kinds = {kind: payload for kind, payload in logger.logged}
    assert kinds["table"]["key"] == "grid/table" and kinds["table"]["rows"] == len(result.rows)
    assert kinds["table"]["columns"][-1] == "score" and kinds["table"]["step"] == 7
    assert kinds["image"]["images"] == [str(p) for p in images] and kinds["image"]["caption"] == ["a", "b"]
    assert list(kinds["metrics"]) == ["grid/score"]


def test_other_loggers_get_only_main_scalars(tiny_encoder, demo_dir):
    tasks = build_tasks(["bitext", "dialogue"], data_dir=demo_dir)
    result = evaluate_grid(tiny_encoder, tasks, ranks=[8], depths=[1], progress=False)
    scalars = main_scalars(result)
    assert len(scalars) == 3 * (2 + 1) + 1  # 3 dims x (2 tasks' main metric + the score), + the full score
    full = max(result.points(), key=lambda p: p.params * 10**6 + p.bytes_per_vector)
    assert scalars["grid/score"] == full.score
    assert "grid/bitext/accuracy@r8_l1_d16" in scalars and "grid/bitext/accuracy/de@r8_l1_d16" not in scalars


def test_callback_is_configurable_from_yaml_like_a_cli_callback():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--callback", type=GridEvaluation)
    config = parser.parse_object({"callback": {
        "class_path": "mlembed.callbacks.grid.GridEvaluation",
        "init_args": {"tasks": ["lee", "bitext"], "data_dir": "data/demo", "baseline": True, "every_n_steps": 50,
                      "caps": {"max_pairs_per_language": 20, "languages": ["de", "fr"]}},
    }})
    callback = parser.instantiate_classes(config).callback
    assert isinstance(callback, GridEvaluation)
    assert callback.task_specs == ("lee", "bitext") and callback.baseline and callback.every_n_steps == 50
    assert callback.caps.max_pairs_per_language == 20 and callback.caps.languages == ("de", "fr")
