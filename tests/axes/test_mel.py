"""MEL: SVD init, gather-first equivalence, rank sets and rank sampling."""

import pytest
import torch

from mlembed.axes.mel import MEL, FactorizedEmbedding
from mlembed.callbacks import RankSampler
from mlembed.callbacks.rank_sampler import sample_rank


def _factors(vocab=500, hidden=48, rank=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, hidden, generator=gen)
    emb = FactorizedEmbedding(vocab, hidden, rank)
    emb.init_from(weight)
    return weight, emb


def test_svd_init_at_full_rank_reproduces_the_embeddings():
    weight, emb = _factors(rank=48)
    ids = torch.randint(0, 500, (4, 9))
    torch.testing.assert_close(emb(ids), weight[ids], atol=1e-4, rtol=1e-4)


def test_svd_init_is_the_best_low_rank_fit():
    weight, emb = _factors(rank=48)
    k = 16
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    best = (u[:, :k] * s[:k]) @ vh[:k]
    torch.testing.assert_close(emb.materialize(k).double(), best, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("vocab_used", [500, 6])  # 6: most tokens repeat, as in real text (one row per id)
def test_gather_first_equals_the_materialised_product_values_and_gradients(vocab_used):
    _, emb = _factors(rank=32)
    ids = torch.randint(0, vocab_used, (3, 7))
    for k in (8, 20, 32):
        emb.active_rank = k
        ref_a = emb.A.detach().clone().requires_grad_(True)
        ref_b = emb.B.detach().clone().requires_grad_(True)
        reference = (ref_a[:, :k] @ ref_b[:k])[ids]  # [3, 7, hidden] the reference formulation
        ours = emb(ids)
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
        grad_out = torch.randn_like(ours)
        emb.zero_grad()
        ours.backward(grad_out)
        reference.backward(grad_out)
        torch.testing.assert_close(emb.A.grad, ref_a.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(emb.B.grad, ref_b.grad, atol=1e-5, rtol=1e-5)
        assert emb.A.grad[:, k:].abs().sum() == 0  # ranks above k get no gradient


def test_uninitialised_factors_refuse_to_run():
    emb = FactorizedEmbedding(10, 8, 4)
    with pytest.raises(RuntimeError, match="SVDInit"):
        emb(torch.zeros(1, 2, dtype=torch.long))


def test_default_rank_set_is_powers_of_two_plus_max():
    assert MEL(rank=512).resolve_ranks() == (64, 128, 256, 512)
    assert MEL(rank=384).resolve_ranks() == (64, 128, 256, 384)
    assert MEL(rank=32, min_rank=8).resolve_ranks() == (8, 16, 32)
    assert MEL(rank=64, ranks=[64, 16, 16]).resolve_ranks() == (16, 64)


def test_rank_sampling_is_proportional_to_rank():
    ranks = (64, 128, 256, 512)
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_rank(ranks, gen) for _ in range(6000)])
    observed = torch.tensor([(draws == k).float().mean().item() for k in ranks])
    expected = torch.tensor(ranks, dtype=torch.float) / sum(ranks)
    assert torch.allclose(observed, expected, atol=0.02), (observed, expected)


def test_rank_sampler_is_a_function_of_seed_and_step():
    sampler = RankSampler(seed=3)
    ranks = (8, 16, 32)
    first = [sampler.rank_at(ranks, s) for s in range(50)]
    assert first == [RankSampler(seed=3).rank_at(ranks, s) for s in range(50)]
    assert first != [RankSampler(seed=4).rank_at(ranks, s) for s in range(50)]
    assert set(first) == set(ranks)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"rank": 0}, "--model.mel.rank"), ({"ranks": []}, "--model.mel.ranks"),
     ({"rank": 64, "ranks": [128]}, "--model.mel.ranks"), ({"min_rank": 0}, "--model.mel.min_rank")],
)
def test_bad_mel_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        MEL(**kwargs)


def test_rank_above_hidden_size_names_the_flag():
    with pytest.raises(ValueError, match=r"--model.mel.rank \(512\) exceeds the backbone's hidden size 384"):
        MEL(rank=512).validate(hidden_size=384, vocab_size=30522)
