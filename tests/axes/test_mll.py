"""MLL: the layer set rule and its errors."""

import pytest
import torch

from mlembed.axes.mll import MLL


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(4, (1, 2, 4)), (6, (1, 2, 4, 6)), (28, (1, 2, 4, 8, 16, 24, 28)), (36, (1, 2, 4, 8, 16, 24, 32, 36)),
     (64, (1, 2, 4, 8, 16, 24, 32, 40, 48, 64))],
)
def test_default_layer_set_follows_the_reference_rule(depth, expected):
    assert MLL().resolve(depth) == expected


def test_disabled_means_last_layer_only():
    assert MLL(enabled=False).resolve(28) == (28,)


def test_given_layers_are_sorted_and_checked_against_depth():
    assert MLL(layers=[4, 1, 4]).resolve(6) == (1, 4)
    with pytest.raises(ValueError, match=r"--model.mll.layers \[8\] exceed the backbone's depth 6"):
        MLL(layers=[2, 8]).resolve(6)
    with pytest.raises(ValueError, match="--model.mll.layers is empty"):
        MLL(layers=[])
    with pytest.raises(ValueError, match="counted from 1"):
        MLL(layers=[0, 2])


def test_combine_averages_over_layers():
    per_layer = {1: torch.tensor(1.0), 2: torch.tensor(2.0), 4: torch.tensor(6.0)}
    assert MLL.combine(per_layer).item() == pytest.approx(3.0)
