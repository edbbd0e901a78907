"""Builds tiny two-stage shards and the ``fit`` arguments of configs/tiny_bert.yaml pointed at them."""

from __future__ import annotations

import json
from pathlib import Path

from mlembed.cli.shards import main as shards_main

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "tiny_bert.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def build_shards(out: Path) -> dict[str, Path]:
    """Shards of fixtures/stage{1,2}.jsonl under ``out`` through the user's command (20 samples per shard)."""
    dirs = {}
    for stage in ("stage1", "stage2"):
        dirs[stage] = out / stage
        code = shards_main(["--input", str(FIXTURES / f"{stage}.jsonl"), "--output", str(dirs[stage]),
                            "--shard-size", "20"])
        assert code == 0, f"building {stage} shards failed"
    return dirs


def data_args(shards: dict[str, Path]) -> list[str]:
    """Flags that point the tiny config's data at ``shards``."""
    return [f"--data.stage1.shards=[{shards['stage1']}]", f"--data.stage2.shards=[{shards['stage2']}]",
            f"--data.stage2.val_shards=[{shards['stage2']}]"]


def callback(class_path: str, **init_args) -> str:
    """One ``--trainer.callbacks+=`` flag appending a callback to the config's list."""
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


def checkpoint_every_step(dirpath: Path) -> str:
    """A ModelCheckpoint writing ``dirpath/last.ckpt`` after every step (resume tests)."""
    return callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=str(dirpath), save_last=True,
                    every_n_train_steps=1, save_top_k=0)


def record_steps(path: Path) -> str:
    """A StepRecorder writing each step's loss, stage and rank to ``path``."""
    return callback("tests.robustness.callbacks.StepRecorder", path=str(path))


def fit_args(shards: dict[str, Path], root: Path, *extra: str) -> list[str]:
    """``fit`` on the tiny config, data from ``shards``, outputs under ``root``, then ``extra`` flags."""
    return ["fit", "--config", str(TINY_CONFIG), *data_args(shards), f"--trainer.default_root_dir={root}", *extra]
