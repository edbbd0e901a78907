"""The base contrastive loss: InfoNCE terms, false-negative masking, gradient modes, distillation."""

import pytest
import torch
import torch.nn.functional as F

from mlembed.losses import ContrastiveLoss, distillation_loss


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _hashes(texts):
    return torch.tensor([hash(t) % 10_000 for t in texts])


def test_in_batch_loss_is_cross_entropy_over_all_positives():
    q, p = _unit(5, 8, seed=1), _unit(5, 8, seed=2)
    loss = ContrastiveLoss(hard_negatives=False)
    terms = loss(q, p, None, query_hash=torch.arange(5), positive_hash=torch.arange(5), use_in_batch=True)
    expected = F.cross_entropy(q @ p.T / 0.05, torch.arange(5))
    torch.testing.assert_close(terms["in_batch"], expected)


def test_hard_negative_loss_scores_each_query_against_its_own_negatives_only():
    q, p, n = _unit(3, 8, seed=1), _unit(3, 8, seed=2), _unit(3, 2, 8, seed=3)
    loss = ContrastiveLoss(in_batch=False, temperature=0.1)
    terms = loss(q, p, n, query_hash=torch.arange(3), positive_hash=torch.arange(3), use_in_batch=True)
    rows = []
    for i in range(3):
        logits = torch.stack([q[i] @ p[i], q[i] @ n[i, 0], q[i] @ n[i, 1]]) / 0.1
        rows.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(terms["hard"], torch.stack(rows).mean())


def test_in_batch_term_is_off_for_tasks_that_do_not_use_it():
    q, p, n = _unit(3, 8), _unit(3, 8, seed=1), _unit(3, 1, 8, seed=2)
    terms = ContrastiveLoss()(q, p, n, query_hash=torch.arange(3), positive_hash=torch.arange(3), use_in_batch=False)
    assert set(terms) == {"hard"}


def test_duplicated_query_is_masked_out_of_the_other_rows_denominator():
    queries = ["hello", "bye", "hello", "thanks"]  # rows 0 and 2 share their query text
    positives = ["hallo", "tschüss", "bonjour", "danke"]
    q, p = _unit(4, 8, seed=5), _unit(4, 8, seed=6)
    qh, ph = _hashes(queries), _hashes(positives)
    masked = ContrastiveLoss(hard_negatives=False)
    unmasked = ContrastiveLoss(hard_negatives=False, mask_false_negatives=False)
    logits = q @ p.T / 0.05

    def row_loss(i, columns):
        label = columns.index(i)
        return F.cross_entropy(logits[i, columns][None], torch.tensor([label]))

    # Row 0 without row 2's column, row 2 without row 0's column, the others with every column.
    expected = torch.stack([
        row_loss(0, [0, 1, 3]), row_loss(1, [0, 1, 2, 3]), row_loss(2, [1, 2, 3]), row_loss(3, [0, 1, 2, 3])
    ]).mean()
    got = masked(q, p, None, query_hash=qh, positive_hash=ph, use_in_batch=True)["in_batch"]
    torch.testing.assert_close(got, expected)
    plain = unmasked(q, p, None, query_hash=qh, positive_hash=ph, use_in_batch=True)["in_batch"]
    torch.testing.assert_close(plain, F.cross_entropy(logits, torch.arange(4)))
    assert not torch.allclose(got, plain)


def test_duplicated_positive_is_masked_too():
    q, p = _unit(3, 8, seed=7), _unit(3, 8, seed=8)
    qh, ph = torch.tensor([1, 2, 3]), torch.tensor([9, 9, 8])
    got = ContrastiveLoss(hard_negatives=False)(q, p, None, query_hash=qh, positive_hash=ph, use_in_batch=True)
    logits = q @ p.T / 0.05
    rows = [F.cross_entropy(logits[0, [0, 2]][None], torch.tensor([0])),
            F.cross_entropy(logits[1, [1, 2]][None], torch.tensor([0])),
            F.cross_entropy(logits[2][None], torch.tensor([2]))]
    torch.testing.assert_close(got["in_batch"], torch.stack(rows).mean())


def test_gradient_mode_none_gives_positives_no_in_batch_gradient():
    q = _unit(4, 8, seed=1).requires_grad_(True)
    p = _unit(4, 8, seed=2).requires_grad_(True)
    for mode, has_grad in (("none", False), ("local", True), ("all", True)):
        q.grad = p.grad = None
        loss = ContrastiveLoss(hard_negatives=False, gather_grad=mode)
        loss(q, p, None, query_hash=torch.arange(4), positive_hash=torch.arange(4), use_in_batch=True)["in_batch"].backward()
        assert q.grad.abs().sum() > 0
        assert (p.grad is not None and p.grad.abs().sum() > 0) == has_grad, mode


def test_distillation_is_mse_to_the_teacher_prefix():
    student = _unit(4, 8, seed=1)
    teacher = torch.randn(4, 32)
    expected = F.mse_loss(student, F.normalize(teacher[:, :8], dim=-1))
    torch.testing.assert_close(distillation_loss((student,), (teacher,)), expected)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"temperature": 0.0}, "--model.loss.temperature"), ({"temperature": -1.0}, "--model.loss.temperature"),
     ({"kd_weight": -0.1}, "--model.loss.kd_weight"), ({"gather_grad": "some"}, "--model.loss.gather_grad"),
     ({"in_batch": False, "hard_negatives": False}, "no loss left")],
)
def test_bad_loss_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        ContrastiveLoss(**kwargs)
