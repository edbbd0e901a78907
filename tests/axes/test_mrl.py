"""MRL: dims, weights (the reference formula) and the wrapped loss."""

import math

import pytest
import torch

from mlembed.axes.mrl import MRL, MRLLoss, prefix


def test_default_dims_and_reference_weights():
    dims, weights = MRL().resolve(1024)
    assert dims == (1024, 512, 256, 128, 64, 32, 16, 8)
    expected = [1 / ((i + 1) * math.sqrt(1024 / d)) for i, d in enumerate(dims)]
    assert weights == pytest.approx(expected)
    assert weights[0] == 1.0 and weights[1] == pytest.approx(1 / (2 * math.sqrt(2)))


def test_non_power_of_two_hidden_keeps_full_size_first():
    dims, _ = MRL().resolve(384)
    assert dims == (384, 256, 128, 64, 32, 16, 8)


def test_given_dims_and_weights():
    # Weights follow the order the dims are written in; the resolved dims run largest first.
    dims, weights = MRL(dims=[64, 384], weights=[1.0, 0.5]).resolve(384)
    assert dims == (384, 64) and weights == (0.5, 1.0)
    dims, weights = MRL(dims=[384, 16, 64], weights=[0.2, 0.7, 0.9]).resolve(384)
    assert dict(zip(dims, weights)) == {384: 0.2, 16: 0.7, 64: 0.9} and dims == (384, 64, 16)
    with pytest.raises(ValueError, match=r"--model.mrl.dims \[64, 64\] repeats a dim"):
        MRL(dims=[64, 64], weights=[1.0, 0.5])
    assert MRL(enabled=False).resolve(384) == ((384,), (1.0,))


def test_bad_mrl_settings_name_the_flag():
    with pytest.raises(ValueError, match=r"--model.mrl.dims \[512\] exceed the backbone's hidden size 384"):
        MRL(dims=[64, 512]).resolve(384)
    with pytest.raises(ValueError, match="--model.mrl.dims is empty"):
        MRL(dims=[])
    with pytest.raises(ValueError, match="--model.mrl.weights"):
        MRL(dims=[8, 16], weights=[1.0])


def test_wrapper_is_the_weighted_sum_of_the_base_loss_on_normalised_prefixes():
    q, p = torch.randn(4, 16), torch.randn(4, 16)
    seen = []

    def base(query, positive, negatives, *, dim):
        seen.append((dim, query.shape[-1], query.norm(dim=-1)))
        return {"x": (query * positive).sum()}

    total, per_dim = MRLLoss(dims=(16, 8), weights=(1.0, 0.25))(q, p, None, base=base)
    expected = (prefix(q, 16) * prefix(p, 16)).sum() + 0.25 * (prefix(q, 8) * prefix(p, 8)).sum()
    torch.testing.assert_close(total, expected)
    assert [s[:2] for s in seen] == [(16, 16), (8, 8)]
    assert all(torch.allclose(s[2], torch.ones(4)) for s in seen)
    assert set(per_dim) == {16, 8}
