"""A user's mistake in ``fit`` is one message and exit code 2, without a traceback; a bug keeps its traceback.

The rule (``mlembed.cli.user_error``): an exception of mlembed's user-error types raised by mlembed's own code,
met directly, through the chain of exceptions that caused it, or re-raised by torch from a loader worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, IterableDataset

from mlembed.cli import TRACEBACK_ENV, user_error
from mlembed.data.stream import ShardError, read_samples
from mlembed.losses import ContrastiveLoss
from tests.distributed.common import environment

ROOT = Path(__file__).resolve().parents[2]
TEMPERATURE = "--model.loss.temperature (-1.0) must be > 0"


def caught(function, *args):
    try:
        function(*args)
    except Exception as err:  # the test inspects whatever was raised
        return err
    raise AssertionError(f"{function.__name__} raised nothing")


def test_fit_with_a_bad_flag_prints_one_message_and_exits_2():
    command = [sys.executable, "-m", "mlembed", "fit", "--config", str(ROOT / "configs/tiny_bert.yaml"),
               "--model.loss.temperature=-1"]
    env = {k: v for k, v in environment().items() if k != TRACEBACK_ENV}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"mlembed fit: error: {TEMPERATURE}" in done.stderr
    assert "Traceback" not in done.stderr
    # ... and the traceback is one setting away.
    verbose = subprocess.run(command, cwd=ROOT, env={**env, TRACEBACK_ENV: "1"}, capture_output=True, text=True,
                             timeout=300)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and TEMPERATURE in verbose.stderr


def test_a_tools_user_error_is_one_message_and_exit_2(tmp_path, monkeypatch, capsys):
    from mlembed.cli import main

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    missing = tmp_path / "missing.ckpt"
    assert main(["evaluate", "--model", str(missing), "--tasks", "lee"]) == 2
    assert capsys.readouterr().err.startswith(f"mlembed evaluate: error: --model {missing} does not exist")
    assert main(["evaluate", "--model", str(missing), "--tasks", "bitext"]) == 2  # the model is named first
    assert f"mlembed evaluate: error: --model {missing} does not exist" in capsys.readouterr().err
    present = tmp_path / "present.ckpt"
    present.touch()
    assert main(["evaluate", "--model", str(present), "--tasks", "bitext"]) == 2  # bitext needs --data-dir
    assert "mlembed evaluate: error: --tasks bitext: reads DATA_DIR/eval/bitext.jsonl" in capsys.readouterr().err
    monkeypatch.setenv(TRACEBACK_ENV, "1")  # ... and the traceback is one setting away
    with pytest.raises(FileNotFoundError, match="--model .*missing.ckpt does not exist"):
        main(["evaluate", "--model", str(missing), "--tasks", "lee"])


def test_mlembeds_own_error_is_the_users_and_others_are_bugs(monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert user_error(caught(ContrastiveLoss, -1.0)) == TEMPERATURE
    assert user_error(caught(json.loads, "{")) is None  # a ValueError raised in the standard library: a bug
    assert user_error(caught(lambda: {}["key"])) is None  # ... or in code outside mlembed

    def wrapped():  # as jsonargparse does: its own ValueError, caused by the settings class's
        try:
            ContrastiveLoss(-1.0)
        except ValueError as err:
            raise ValueError("Does not validate against any of the Union subtypes") from err

    assert user_error(caught(wrapped)) == TEMPERATURE
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    assert user_error(caught(ContrastiveLoss, -1.0)) is None


class Shards(IterableDataset):
    def __init__(self, urls):
        self.urls = urls

    def __iter__(self):
        yield from read_samples(self.urls)


class Broken(IterableDataset):
    def __iter__(self):
        raise ValueError("a bug in a dataset outside mlembed")
        yield


def test_a_damaged_shard_read_in_a_loader_worker_is_reported_by_name(tmp_path, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ShardError, match=rf"damaged shard: .*header in {shard}"):
        list(read_samples([str(shard)]))
    missing = tmp_path / "missing-000000.tar"
    with pytest.raises(ShardError, match=rf"in {missing}"):
        list(read_samples([str(missing)]))
    # In a worker process torch re-raises it with the worker's traceback as text: the message still comes out.
    err = caught(lambda: list(DataLoader(Shards([str(shard)]), batch_size=None, num_workers=1)))
    assert "Original Traceback" in str(err)
    direct = str(caught(lambda: list(read_samples([str(shard)]))))
    assert user_error(err) == direct  # the worker's message, word for word, without its traceback
    bug = caught(lambda: list(DataLoader(Broken(), batch_size=None, num_workers=1)))
    assert "Original Traceback" in str(bug) and user_error(bug) is None
