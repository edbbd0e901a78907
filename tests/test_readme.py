"""README.md as a front page: short, the two set-up commands at its top, and every command in it runnable or parsed.

Each ``python -m mlembed`` line is parsed by its command's own parser (LightningCLI with ``--print_config`` for
fit, which reads every config and preset named); the sweep dry run and the Python example run for real, the
example on an efficiency export of the demo's model shape. The recipe's lines are run by tests/test_recipe.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

import mlembed
from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig
from mlembed.cli import evaluate, export, main, mine, shards, sweep
from mlembed.export import export as export_model
from mlembed.module import EmbeddingModule
from mlembed.pooling import MeanPooling
from tests.conftest import MINILM_DIR
from tests.test_recipe import commands, readme_recipe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PARSERS = {"shards": shards.parser, "export": export.parser, "evaluate": evaluate.parser, "sweep": sweep.parser,
           "mine": mine.parser}
SHELL = {"$NNODES": "2", "$JOB_ID": "7", "$MASTER_ADDR": "localhost"}
"""Values for the shell variables of the launch lines."""


def test_the_readme_is_a_front_page_with_the_two_commands_at_its_top():
    assert len(README.splitlines()) <= 180
    intro, first_block = README.split("```bash\n", 1)
    assert "3D Matryoshka Learning" in intro and len(intro.splitlines()) <= 8  # what it is, then the commands
    setup = first_block.split("```", 1)[0].strip().splitlines()
    assert len(setup) == 2
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert setup[1] == ci  # CI runs exactly the README's test command
    assert setup[0].endswith("python -m mlembed fit --config configs/demo.yaml")
    extras = yaml.safe_load(_toml_extras())
    assert {"demo", "dev"} <= set(extras)
    for link in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", README):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def _toml_extras() -> str:
    import tomllib

    return yaml.safe_dump(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def readme_commands() -> list[str]:
    """The README's commands outside its recipe section (which tests/test_recipe.py runs) and its set-up lines."""
    recipe = set(commands(readme_recipe()))
    return [c for c in commands(README) if c not in recipe and not c.startswith("pip install")]


def test_every_readme_command_is_an_mlembed_or_launcher_line():
    listed = readme_commands()
    assert len(listed) >= 10
    for command in listed:
        assert command.startswith(("python -m mlembed ", "torchrun ")), command


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("python -m mlembed fit ")])
def test_every_fit_line_parses_with_its_configs_and_presets(command, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = _mlembed_argv(command)
    printed = _print_config(argv, capsys)
    assert printed["model"]["backbone"] and printed["data"]["class_path"].endswith("ShardDataModule")


def test_the_launch_line_parses_for_torchrun_and_for_mlembed(monkeypatch, capsys):
    from torch.distributed.run import get_args_parser

    (line,) = [c for c in readme_commands() if c.startswith("torchrun ")]
    for variable, value in SHELL.items():
        line = line.replace(variable, value)
    args = get_args_parser().parse_args(shlex.split(line)[1:])
    assert args.module and args.training_script == "mlembed" and args.nproc_per_node == "8"
    monkeypatch.chdir(ROOT)
    printed = _print_config(list(args.training_script_args), capsys)
    assert printed["trainer"]["num_nodes"] == 2 and str(printed["trainer"]["devices"]) == "8"


@pytest.mark.parametrize("command", [c for c in readme_commands() if shlex.split(c)[3:4] and
                                     shlex.split(c)[3] in PARSERS])
def test_every_other_command_parses_with_its_own_parser(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    name, *rest = _mlembed_argv(command)
    args = PARSERS[name]().parse_args(rest)
    for value in vars(args).values():  # a repository file named in the README exists
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item.startswith(("configs/", "sweeps/", "callbacks/")):
                assert (ROOT / item).is_file(), item


def test_the_sweep_dry_run_lists_every_combination(monkeypatch, capsys):
    (line,) = [c for c in readme_commands() if " sweep " in c]
    monkeypatch.chdir(ROOT)
    assert main(_mlembed_argv(line)) == 0
    assert capsys.readouterr().out.count("--model.mel.enabled=") == 8


def test_the_python_example_runs_on_an_efficiency_export_of_the_demo_model(tmp_path, monkeypatch):
    (example,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    model = EmbeddingModule(BackboneConfig(pretrained=str(MINILM_DIR), max_seq_length=32), pooling=MeanPooling(),
                            mel=MEL(rank=384, ranks=[32, 64, 128, 384]), mll=MLL(layers=[2, 4, 6]),
                            mrl=MRL(dims=[64, 128, 384], weights=[1.0, 1.0, 1.0]))
    model.configure_model()
    model.init_mel_from_svd()
    path = re.search(r'mlembed\.load\("([^"]+)"', example)[1]
    monkeypatch.chdir(tmp_path)
    export_model(model, path, mode="efficiency", rank=64)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["vectors"].shape == (2, 128) and scope["small"].shape == (1, 64)
    for vectors in (scope["vectors"], scope["small"]):
        assert torch.allclose(torch.as_tensor(vectors).norm(dim=-1), torch.ones(len(vectors)), atol=1e-5)
    # sentence-transformers and plain transformers, through the export's own code, give mlembed's vectors.
    full = mlembed.load(path).encode(["Hello world", "Bonjour le monde"])
    torch.testing.assert_close(torch.as_tensor(scope["same"]), full, rtol=0, atol=1e-5)
    mean = scope["states"].mean(dim=1)  # one text, no padding: mean pooling is the plain mean
    torch.testing.assert_close(torch.nn.functional.normalize(mean, dim=-1), full[:1], rtol=0, atol=1e-5)


def _mlembed_argv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "mlembed"], command
    return words[3:]


def _print_config(argv: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as stop:
        main([*[a for a in argv if a != "--print_config"], "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)
