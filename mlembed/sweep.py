"""A wandb sweep file run (or listed) here, without a wandb server (``mlembed sweep SWEEP.yaml --local``).

A sweep file (``sweeps/*.yaml``) is the one wandb's ``wandb sweep`` reads: flat dotted CLI keys as parameters
and ``command: [${env}, ${interpreter}, -m, mlembed, fit, --config, CONFIG, ${args}]``. Locally, grid sweeps run
every combination and random/bayes sweeps a seeded sample (bayes needs the server's model, so it samples at
random here). Each run is the subprocess the wandb agent would start, with the same ``--key=value`` flags, in
its own ``OUT/<i>`` directory with a CSVLogger; ``OUT/summary.{csv,md}`` holds parameters, the sweep metric's
final value and the return code of every run.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values")
"""Distributions sampled locally (beyond ``values`` and ``value``)."""
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"


@dataclass
class Sweep:
    """A parsed, checked sweep file."""

    path: Path
    """The file it was read from (named in every error)."""
    name: str
    """``name`` of the file, default its stem."""
    method: str
    """grid, random or bayes."""
    metric: str
    """``metric.name``: the logged key the sweep optimises."""
    goal: str
    """``metric.goal``: minimize or maximize."""
    parameters: dict[str, dict[str, Any]]
    """Flat dotted CLI key -> its wandb spec (``values``, ``value`` or ``distribution`` with ``min``/``max``)."""
    command: list[str]
    """The agent's command template."""


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    with path.open(encoding="utf-8") as handle:  # a stream, so YAML errors name the file
        spec = yaml.safe_load(handle)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a sweep file is a mapping with method, metric, parameters and command")
    method = spec.get("method")
    if method not in METHODS:
        raise ValueError(f"{path}: method {method!r} must be one of {', '.join(METHODS)}")
    metric = spec.get("metric") or {}
    if not metric.get("name") or metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise ValueError(f"{path}: metric needs a name and goal minimize or maximize, got {metric!r}")
    parameters = spec.get("parameters") or {}
    if not parameters:
        raise ValueError(f"{path}: parameters is empty")
    for key, param in parameters.items():
        _check_parameter(path, method, key, param)
    command = [str(part) for part in spec.get("command") or []]
    if "${args}" not in command:
        raise ValueError(f"{path}: command must contain ${{args}} (where the agent puts --key=value flags)")
    return Sweep(path, str(spec.get("name") or path.stem), method, metric["name"], metric.get("goal", "minimize"),
                 parameters, command)


def _check_parameter(path: Path, method: str, key: str, param: Any) -> None:
    where = f"{path}: parameter {key}"
    if not isinstance(param, dict):
        raise ValueError(f"{where} must be a mapping (values, value, or distribution with min and max)")
    if "values" in param:
        if not isinstance(param["values"], list) or not param["values"]:
            raise ValueError(f"{where}: values must be a non-empty list")
    elif "value" not in param:
        if method == "grid":
            raise ValueError(f"{where}: a grid sweep needs values (or value), not a distribution")
        if param.get("distribution") not in DISTRIBUTIONS or "min" not in param or "max" not in param:
            raise ValueError(f"{where}: give values, value, or distribution ({', '.join(DISTRIBUTIONS)}) with "
                             f"min and max; got {param!r}")
        if not param["min"] < param["max"]:
            raise ValueError(f"{where}: min ({param['min']}) must be below max ({param['max']})")


def expand(sweep: Sweep, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter combinations to run: grid: all (first ``count``); random/bayes: ``count`` seeded draws."""
    if sweep.method == "grid":
        keys = list(sweep.parameters)
        choices = [_grid_values(sweep.parameters[k]) for k in keys]
        combos = [dict(zip(keys, values)) for values in itertools.product(*choices)]
        return combos[:count] if count is not None else combos
    rng = random.Random(seed)
    return [{k: _sample(p, rng) for k, p in sweep.parameters.items()} for _ in range(count or 8)]


def _grid_values(param: dict) -> list:
    return list(param["values"]) if "values" in param else [param["value"]]


def _sample(param: dict, rng: random.Random) -> Any:
    if "values" in param:
        return rng.choice(param["values"])
    if "value" in param:
        return param["value"]
    low, high = param["min"], param["max"]
    if param["distribution"] == "int_uniform":
        return rng.randint(int(low), int(high))
    if param["distribution"] == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def agent_args(params: dict[str, Any]) -> list[str]:
    """``--key=value`` flags exactly as the wandb agent's ``${args}`` writes them (Python's ``str`` of values)."""
    return [f"--{key}={value}" for key, value in params.items()]


def build_command(sweep: Sweep, params: dict[str, Any], run_dir: Path, config: str | None = None,
                  extra: list[str] = ()) -> list[str]:
    """The agent's command for ``params``, run by this interpreter, logging to a CSVLogger in ``run_dir``."""
    local = [f"--trainer.default_root_dir={run_dir}", f"--trainer.logger={CSV_LOGGER}",
             f"--trainer.logger.init_args.save_dir={run_dir}"]
    command, replace_config = [], False
    for part in sweep.command:
        if part == "${env}":
            continue  # wandb's /usr/bin/env; the environment is inherited anyway
        if part == "${interpreter}":
            command.append(sys.executable)
        elif part == "${args}":
            command += agent_args(params) + local + list(extra)
        elif part.startswith("${"):
            raise ValueError(f"{sweep.path}: command token {part} is not supported locally")
        else:
            command.append(config if replace_config and config else part)
        replace_config = part == "--config"
    return command


def final_metric(run_dir: Path, name: str) -> float | None:
    """The last value of ``name`` in the run's CSVLogger metrics.csv (None when never logged)."""
    files = sorted(run_dir.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    with files[-1].open(newline="", encoding="utf-8") as handle:
        values = [row[name] for row in csv.DictReader(handle) if row.get(name) not in (None, "")]
    return float(values[-1]) if values else None


def write_summary(sweep: Sweep, rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """``out/summary.csv`` and ``out/summary.md``: one row per run (parameters, metric, return code, seconds)."""
    columns = ["run", *sweep.parameters, sweep.metric, "returncode", "seconds"]
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Sweep {sweep.name} ({sweep.metric}, {sweep.goal})", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_local(sweep: Sweep, combos: list[dict[str, Any]], out: Path, config: str | None, extra: list[str]) -> list[dict]:
    """Run each combination as a subprocess in ``out/<i>``; the summary rows, written after every run."""
    rows = []
    for i, params in enumerate(combos):
        run_dir = out / str(i)
        run_dir.mkdir(parents=True, exist_ok=True)
        command = build_command(sweep, params, run_dir, config, extra)
        print(f"[{i + 1}/{len(combos)}] {' '.join(agent_args(params))}", flush=True)
        start = time.perf_counter()
        with (run_dir / "output.log").open("w", encoding="utf-8") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        value = final_metric(run_dir, sweep.metric)
        rows.append({"run": i, **{k: str(v) for k, v in params.items()}, sweep.metric: value, "returncode": code,
                     "seconds": round(time.perf_counter() - start, 1)})
        if code != 0:
            print(f"  run {i} failed (return code {code}): see {run_dir / 'output.log'}", flush=True)
        write_summary(sweep, rows, out)  # after each run, so a stopped sweep keeps what it finished
    return rows
