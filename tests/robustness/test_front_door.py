"""One front door: ``mlembed --help`` lists every command; each command keeps one error contract (one line naming
the file, record or flag, exit code 2, no traceback)."""

from __future__ import annotations

import csv

import pytest

from mlembed.cli import COMMANDS, main
from tests.helpers import failure
from tests.robustness.tiny_run import fit_args


def test_the_root_help_lists_every_command_under_one_name(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: mlembed COMMAND")
    for name in ("fit", "validate", "test", "predict", "shards", "export", "evaluate", "sweep"):
        assert f"\n  {name} " in printed and name in COMMANDS
    assert main([]) == 2 and "usage: mlembed COMMAND" in capsys.readouterr().err
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_every_command_names_itself_mlembed(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code in (0, None)
        printed = capsys.readouterr().out
        assert printed.startswith((f"usage: mlembed {name}", f"usage: mlembed [options] {name}")), printed[:200]


def test_a_yaml_mistake_in_a_config_is_one_line_naming_the_file_and_line(capsys, tiny_shards, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1, 2\n")
    message = failure(capsys, ["fit", "--config", str(bad)])
    assert message.startswith(f"mlembed fit: error: --config {bad}:3:1: not valid YAML")
    assert len(message.strip().splitlines()) == 2  # the line, and how to see the traceback: no usage dump
    message = failure(capsys, fit_args(tiny_shards, tmp_path, "--config", str(tmp_path / "missing.yaml")))
    assert f"--config {tmp_path / 'missing.yaml'}: no such file" in message


def test_shards_input_mistakes_name_the_file_and_exit_2(capsys, tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    message = failure(capsys, ["shards", "--input", str(folder), "--output", str(tmp_path / "out")])
    assert f"mlembed shards: error: --input {folder} is a directory" in message
    corrupt = tmp_path / "data.parquet"
    corrupt.write_bytes(b"not a parquet file at all")
    message = failure(capsys, ["shards", "--input", str(corrupt), "--output", str(tmp_path / "out")])
    assert f"--input {corrupt}: not a readable parquet file" in message
    assert not (tmp_path / "out").exists()
    assert main(["shards", "--input", str(corrupt), "--output", str(tmp_path / "out")]) == 2


def test_evaluate_names_a_wrong_model_first_and_needs_no_data_dir_by_default(capsys, reference_run, tmp_path):
    message = failure(capsys, ["evaluate", "--model", str(tmp_path / "nope.ckpt"), "--grid", "--budget-bytes", "64"])
    assert f"--model {tmp_path / 'nope.ckpt'} does not exist" in message and "--data-dir" not in message
    out = tmp_path / "out"
    code = main(["evaluate", "--model", str(reference_run["ckpt"]), "--budget-bytes", "64", "--no-plots",
                 "--max-sts-pairs", "20", "--max-pairs-per-language", "5", "--max-languages", "1", "--out", str(out)])
    assert code in (0, 1)  # 1: no point fits the budget; either way the example runs without --data-dir
    with (out / "grid.csv").open() as handle:
        assert {row["task"] for row in csv.DictReader(handle)} == {"lee", "wiki", "sphinx"}
