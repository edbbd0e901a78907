"""Every sweep file expands to combinations that parse through the CLI as the wandb agent writes them; the
local runner runs one and summarises it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from lightning.pytorch import LightningDataModule

from mlembed.cli.sweep import main
from mlembed.module import EmbeddingModule
from mlembed.sweep import agent_args, expand, load_sweep
from tests.robustness.tiny_run import ROOT, build_shards, callback, data_args
from tests.test_cli_configs import ParseOnlyCLI

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
SAMPLES = 4
"""Draws checked per random/bayes sweep."""


def parse(*args: str):
    """The config the CLI resolves from ``fit``'s flags ``args`` (run=False: the parser has no subcommands)."""
    cli = ParseOnlyCLI(EmbeddingModule, LightningDataModule, subclass_mode_data=True, run=False, args=list(args))
    return cli.config


def config_of(sweep) -> str:
    """The --config the sweep's command trains with."""
    return sweep.command[sweep.command.index("--config") + 1]


def test_there_are_sweeps():
    assert {p.stem for p in SWEEPS} >= {"axes", "mel_rank", "lr_temperature"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_combination_parses_as_the_agent_writes_it(path):
    sweep = load_sweep(path)
    combos = expand(sweep, None if sweep.method == "grid" else SAMPLES, seed=0)
    assert combos
    for params in combos:
        config = parse("--config", str(ROOT / config_of(sweep)), *agent_args(params))
        for key, value in params.items():
            assert config[key] == value, f"{path.name}: --{key}={value} arrived as {config[key]!r}"


def test_axes_sweep_is_the_full_grid_of_switches():
    combos = expand(load_sweep(ROOT / "sweeps/axes.yaml"))
    switches = {tuple(c[f"model.{a}.enabled"] for a in ("mel", "mll", "mrl")) for c in combos}
    assert len(combos) == len(switches) == 8


def test_sampled_values_stay_within_the_distribution():
    sweep = load_sweep(ROOT / "sweeps/lr_temperature.yaml")
    for params in expand(sweep, 20, seed=1):
        assert 1e-5 <= params["model.optimizer.lr"] <= 3e-4
        assert 0.01 <= params["model.loss.temperature"] <= 0.1


def test_a_list_value_parses_as_the_agent_writes_it():
    # The agent writes lists with Python's str: "--model.mel.ranks=[64, 128]" (a space after the comma).
    assert agent_args({"model.mel.ranks": [64, 128]}) == ["--model.mel.ranks=[64, 128]"]
    config = parse("--config", str(ROOT / "configs/demo.yaml"), *agent_args({"model.mel.ranks": [64, 128]}))
    assert config.model.mel.ranks == [64, 128]


@pytest.mark.parametrize("text, message", [
    ("method: grid\nmetric: {name: val/loss}\nparameters: {}\ncommand: ['${args}']", "parameters is empty"),
    ("method: annealing\nmetric: {name: x}\nparameters: {a: {values: [1]}}\ncommand: ['${args}']", "method"),
    ("method: grid\nmetric: {name: x}\nparameters: {a: {distribution: uniform, min: 0, max: 1}}\n"
     "command: ['${args}']", "parameter a: a grid sweep needs values"),
    ("method: random\nmetric: {name: x}\nparameters: {a: {distribution: beta}}\ncommand: ['${args}']",
     "parameter a"),
    ("method: grid\nmetric: {name: x}\nparameters: {a: {values: [1]}}\ncommand: [python]", "${args}"),
])
def test_a_bad_sweep_file_is_refused_naming_file_and_key(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main([str(path), "--local", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_dry_run_lists_every_combination_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweeps/axes.yaml", "--local", "--dry-run", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and "--model.mel.enabled=False" in lines[-1]
    assert not out.exists()


def test_local_run_writes_a_summary_with_the_metric(tmp_path):
    shards = build_shards(tmp_path / "shards")
    out = tmp_path / "sweep"
    code = main(["sweeps/axes.yaml", "--local", "--max-runs", "1", "--out", str(out),
                 "--config", "configs/tiny_bert.yaml", "--extra", *data_args(shards),
                 callback("mlembed.callbacks.grid.GridEvaluation", tasks=["lee"], caps={"max_sts_pairs": 100},
                          plots=False)])
    assert code == 0, (out / "0" / "output.log").read_text()[-3000:]
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["returncode"] == "0"
    assert rows[0]["model.mel.enabled"] == "True"
    assert -1 <= float(rows[0]["grid/score"]) <= 1  # Lee STS Spearman, read back from the run's own metrics.csv
    assert "grid/score" in (out / "summary.md").read_text()
    assert list(Path(out / "0").glob("**/metrics.csv"))
