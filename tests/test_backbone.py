"""The backbone's layer states: independent of what depth the model ran at before."""

from __future__ import annotations

import pytest
import torch

from mlembed.backbone import Backbone
from tests.helpers import tiny_backbone


def fresh(kind: str) -> Backbone:
    backbone = Backbone(tiny_backbone(kind, layers=6))
    backbone.build()
    backbone.eval()
    return backbone


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 1000, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row
    return ids, mask


@pytest.mark.parametrize("kind", ["qwen3", "bert"])
@pytest.mark.parametrize("first", [[1, 4], [1, 2], [3]])
def test_layer_states_do_not_depend_on_the_depth_of_an_earlier_call(kind, first):
    # transformers 5 records hidden states with hooks put on the layers present at the first call that asks for
    # them: a first call at reduced depth used to give a wrong state (or an IndexError) at full depth later.
    ids, mask = inputs()
    every = [1, 2, 3, 4, 5, 6]
    with torch.no_grad():
        reference = fresh(kind)(ids, mask, every)
        used = fresh(kind)
        used(ids, mask, first)
        after = used(ids, mask, every)
        again = used(ids, mask, first)
    for layer in every:
        torch.testing.assert_close(after[layer], reference[layer], msg=f"layer {layer}")
    for layer in first:
        # A depth-l slice of the full pass equals the depth-l model's own output at its deepest layer.
        torch.testing.assert_close(again[layer], reference[layer], msg=f"layer {layer} at reduced depth")


def test_intermediate_states_are_the_layer_outputs_through_the_final_norm():
    # Against transformers' own hidden_states on a fresh full-depth model (which records every layer).
    backbone = fresh("qwen3")
    ids, mask = inputs()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = backbone(ids, mask, [2, 5, 6])
        out = backbone.model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                             output_hidden_states=True, use_cache=False)
    norm = backbone.final_norm()
    torch.testing.assert_close(ours[2], norm(out.hidden_states[2]))
    torch.testing.assert_close(ours[5], norm(out.hidden_states[5]))
    torch.testing.assert_close(ours[6], out.last_hidden_state)
