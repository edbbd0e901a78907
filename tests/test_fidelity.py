"""configs/qwen3_0.6b.yaml runs the authors' training settings by default; each mlembed extra is one flag away."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from mlembed.cli import main
from mlembed.data.batching import pick_negatives
from tests.helpers import failure
from tests.robustness.tiny_run import fit_args

ROOT = Path(__file__).resolve().parents[1]


def mined(rows: int, negatives: int = 24, task: str = "retrieval") -> list[dict]:
    """Rows shaped like the released data: 24 mined negatives each, tagged by row and position."""
    return [{"id": str(i), "source": "s", "task": task, "positive": f"p{i}",
             "negatives": [f"n{i}.{k}" for k in range(negatives)]} for i in range(rows)]


def positions(flat: list[str], rows: int, n: int) -> list[list[int]]:
    """The position (among the row's mined negatives) of each negative picked for each row."""
    return [[int(text.split(".")[1]) for text in flat[i * n:(i + 1) * n]] for i in range(rows)]


def test_one_draw_per_batch_is_shared_by_every_row():
    rng = random.Random(0)
    draws = [positions(pick_negatives(mined(8), 7, rng, draw="batch"), 8, 7) for _ in range(20)]
    for rows in draws:
        assert all(row == rows[0] for row in rows)  # the same positions in every row of the batch
        assert len(set(rows[0])) == 7 and all(0 <= k < 24 for k in rows[0])
    assert len({tuple(rows[0]) for rows in draws}) > 10  # a new draw each batch
    per_row = positions(pick_negatives(mined(8), 7, random.Random(0), draw="row"), 8, 7)
    assert any(row != per_row[0] for row in per_row)  # mlembed's per-row draw differs from row to row


def test_classification_takes_the_first_negatives_and_short_rows_are_padded():
    assert positions(pick_negatives(mined(4, 1, "classification"), 1, random.Random(0), draw="batch"), 4, 1) \
        == [[0]] * 4
    assert positions(pick_negatives(mined(4, 5, "classification"), 2, random.Random(3), draw="batch"), 4, 2) \
        == [[0, 1]] * 4
    rows = mined(3, 2)  # fewer mined negatives than asked: each row keeps its own, padded with other positives
    flat = pick_negatives(rows, 3, random.Random(0), draw="batch")
    for i, row in enumerate(rows):
        mine = flat[3 * i:3 * i + 3]
        assert set(row["negatives"]) <= set(mine) and row["positive"] not in mine


def test_the_preset_holds_the_authors_settings():
    config = yaml.safe_load((ROOT / "configs" / "qwen3_0.6b.yaml").read_text())
    loss, data = config["model"]["loss"], config["data"]["init_args"]
    assert loss["gather_grad"] == "none" and loss["mask_false_negatives"] is False
    assert data["loader"]["bucket_batches"] == 1
    for stage in ("stage1", "stage2"):
        assert data[stage]["negative_draw"] == "batch" and data[stage]["instructions"] is False
        assert data[stage]["num_negatives"] == {"retrieval": 7, "clustering": 9, "classification": 1}
    optimizer = config["model"]["optimizer"]
    assert (optimizer["warmup_steps"], optimizer["min_lr"], optimizer["betas"], optimizer["weight_decay"]) == \
        (100, 1e-7, [0.9, 0.98], 0.01)


def test_print_config_shows_the_authors_settings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "qwen3_0.6b.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["loss"]["gather_grad"] == "none"
    assert printed["model"]["loss"]["mask_false_negatives"] is False
    assert printed["data"]["init_args"]["stage2"]["negative_draw"] == "batch"
    stage1 = printed["data"]["init_args"]["stage1"]
    assert (stage1["epochs"], stage1["steps"], printed["data"]["init_args"]["loader"]["bucket_batches"]) == (2.0, 0, 1)


def test_instructions_on_shards_without_any_instruction_is_an_error(capsys, tiny_shards, tmp_path):
    # Stage 1's fixture records carry no instruction (like the released data): instructions: true would do nothing.
    message = failure(capsys, fit_args(tiny_shards, tmp_path, "--data.stage1.steps=1", "--data.stage2.steps=1",
                                       f"--data.stage2.shards=[{tiny_shards['stage1']}]"))
    assert "--data.stage2.instructions is true but no record of --data.stage2.shards has an instruction" in message
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_a_bad_negative_draw_names_the_flag(capsys, tiny_shards, tmp_path):
    message = failure(capsys, fit_args(tiny_shards, tmp_path, "--data.stage1.negative_draw=column"))
    assert "--data.stage1.negative_draw ('column') must be one of row, batch" in message
