"""What a fit shows while it trains: the stage and step of the run, loss and rate (mlembed.callbacks.progress)."""

from __future__ import annotations

import re

from mlembed.callbacks.progress import Progress
from mlembed.cli import main
from tests.robustness.tiny_run import callback, fit_args

SHORT = ["--data.stage1.steps=3", "--data.stage2.steps=2", "--trainer.limit_val_batches=1"]
SHOWN = ["--trainer.enable_progress_bar=true", "--trainer.enable_model_summary=true"]
"""configs/tiny_bert.yaml turns both off, as the suite's runs need neither."""


def test_a_fit_written_to_a_file_prints_a_line_every_n_steps_and_at_each_stage_end(capsys, tiny_shards, tmp_path):
    assert main(fit_args(tiny_shards, tmp_path, *SHORT, *SHOWN, "--trainer.log_every_n_steps=2")) == 0
    out = capsys.readouterr().out
    lines = [line.split(" · ") for line in out.splitlines() if line.startswith("mlembed: step ")]
    assert [line[:2] for line in lines] == [["mlembed: step 2/5", "stage 1"], ["mlembed: step 3/5", "stage 1"],
                                            ["mlembed: step 4/5", "stage 2"], ["mlembed: step 5/5", "stage 2"]]
    assert re.search(r"^mlembed: step 3/5 .*\nmlembed: stage 1 done at step 3, \d+:\d\d:\d\d elapsed\n", out, re.M)
    for line in lines:
        assert re.fullmatch(r"loss \d+(\.\d+)?", line[2]) and re.fullmatch(r"\d+\.\d\d steps/s", line[3])
        assert re.fullmatch(r"\d+:\d\d:\d\d elapsed, \d+:\d\d:\d\d left", line[4])
    assert lines[-1][4].endswith("0:00:00 left")
    assert re.search(r"^mlembed: validation at step 5: val/loss \d", out, re.M)
    # The model's size in one line instead of Lightning's table (whose FLOPs column read 0).
    assert re.search(r"^mlembed: encoder \(Encoder\): [\d.]+ [KM] parameters, [\d.]+ [KM] trainable, [\d.]+ MB$",
                     out, re.M)
    assert "FLOPs" not in out and "Epoch" not in out


def test_a_chosen_progress_bar_or_none_replaces_the_lines(capsys, tiny_shards, tmp_path):
    bar = callback("lightning.pytorch.callbacks.TQDMProgressBar", refresh_rate=1)
    assert main(fit_args(tiny_shards, tmp_path / "tqdm", *SHORT, *SHOWN, bar)) == 0
    captured = capsys.readouterr()
    assert "mlembed: step " not in captured.out and "| 5/5 [" in captured.out  # tqdm's bar, as chosen
    assert main(fit_args(tiny_shards, tmp_path / "off", *SHORT, "--trainer.enable_progress_bar=false",
                         "--trainer.enable_model_summary=false")) == 0
    out = capsys.readouterr().out
    assert "mlembed: step " not in out and "parameters" not in out


def test_the_terminal_bar_is_described_by_the_stage_not_an_epoch_count():
    bar = Progress(lines=False)
    assert bar._get_train_description(0) == "training"
    bar._stage = 2
    assert bar._get_train_description(0) == "stage 2"
    assert Progress(every=5).every == 5
    try:
        Progress(every=0)
    except ValueError as err:
        assert "every (0) must be at least 1" in str(err)
    else:
        raise AssertionError("every=0 was accepted")
