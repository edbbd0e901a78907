"""A checkpoint written by an earlier version of mlembed still loads, exports and embeds as it did then.

``tests/fixtures/checkpoint_v1.ckpt`` is a LightningCLI checkpoint of a tiny BERT (MEL ranks 4/8, layers 1/2,
dims 4/8) written before the encoder moved out of the LightningModule (its state-dict keys start with
``backbone.``); ``checkpoint_v1.json`` holds what that version's ``mlembed.load(...).encode`` returned at three
points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mlembed
from mlembed.export import export

FIXTURES = Path(__file__).parent / "fixtures"
CKPT = FIXTURES / "checkpoint_v1.ckpt"
EXPECTED = json.loads((FIXTURES / "checkpoint_v1.json").read_text())


@pytest.mark.parametrize("point", sorted(EXPECTED["encode"]))
def test_a_checkpoint_of_the_previous_layout_embeds_as_it_did(point):
    rank, depth, dim = map(int, point.split(","))
    model = mlembed.load(CKPT, rank=rank, depth=depth, dim=dim)
    got = model.encode(EXPECTED["texts"])
    torch.testing.assert_close(got, torch.tensor(EXPECTED["encode"][point]), atol=1e-5, rtol=1e-4)


def test_a_checkpoint_of_the_previous_layout_reports_its_points_and_exports(tmp_path):
    model = mlembed.load(CKPT)
    points = model.points()
    assert [list(points.ranks), list(points.depths), list(points.dims)] == [
        EXPECTED["points"]["ranks"], EXPECTED["points"]["depths"], EXPECTED["points"]["dims"]]
    out = export(CKPT, tmp_path / "export", mode="efficiency", rank=4, depth=1, dim=4)
    exported = mlembed.load(out).encode(EXPECTED["texts"])
    torch.testing.assert_close(exported, torch.tensor(EXPECTED["encode"]["4,1,4"]), atol=1e-5, rtol=1e-4)
