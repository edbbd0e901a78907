"""Distillation from a separate frozen teacher: frozen, outside the optimizer and checkpoint, exact at the start,
composed with all three axes and with gradient caching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from mlembed.axes import MEL, MLL, MRL
from mlembed.backbone import BackboneConfig
from mlembed.losses import ContrastiveLoss, similarity_distillation_loss
from mlembed.module import EmbeddingModule
from mlembed.optim import OptimizerConfig
from mlembed.teacher import TeacherConfig, teacher_vectors
from tests.conftest import MINILM_DIR, tiny_bert_config
from tests.helpers import make_batch, tiny_backbone, tiny_module

DISTIL = {"kd_teacher": "model", "kd_similarity_weight": 10.0, "kd_weight": 1.0}


def distilled_towards(module, batch, last):
    """The teacher's vectors that ``module``'s loss distils towards for ``batch`` (its ``kd_teacher`` setting)."""
    return teacher_vectors(module.loss_fn, getattr(module, "frozen_teacher", None), batch, last)


def distilling(kind: str = "bert", **loss) -> EmbeddingModule:
    return tiny_module(kind, rank=64, layers=3, loss=ContrastiveLoss(**{**DISTIL, **loss}))  # full rank: exact


def test_teacher_is_frozen_and_outside_the_module_tree():
    module = distilling()
    teacher = module.frozen_teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    student = {id(p) for p in module.parameters()}
    assert not student & {id(p) for p in teacher.parameters()}  # in no optimizer built from parameters()
    assert not any("teacher" in key for key in module.state_dict())  # and in no checkpoint
    module.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())  # no dropout, ever


def test_teacher_gets_no_gradient_no_optimizer_state_and_never_changes():
    module = distilling()
    before = {k: v.clone() for k, v in module.frozen_teacher.state_dict().items()}
    batch = make_batch(module)
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader([batch] * 3, batch_size=None))
    optimizer = trainer.optimizers[0]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    teacher_params = {id(p) for p in module.frozen_teacher.parameters()}
    assert optimized and not optimized & teacher_params
    assert not teacher_params & {id(p) for p in optimizer.state}
    assert all(p.grad is None for p in module.frozen_teacher.parameters())
    for key, value in module.frozen_teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    student_embedding = module.encoder.backbone.model.embeddings.word_embeddings.A
    # The student did train (the module frees its gradients after each step: its optimizer state shows the steps).
    assert trainer.global_step == 3 and int(optimizer.state[student_embedding]["step"]) == 3


def test_the_starting_model_teaches_itself_exactly_at_the_full_point():
    module = distilling()
    module.eval()
    batch = make_batch(module)
    teacher = distilled_towards(module, batch, None)
    depth = module.encoder.backbone.depth
    with module.encoder.at_rank(None):
        query = module.encoder(batch["query"], [depth])[depth]
        positive = module.encoder(batch["positive"], [depth])[depth]
    torch.testing.assert_close(teacher[0], F.normalize(query, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher[1], F.normalize(positive, dim=-1), atol=1e-5, rtol=0)
    terms = module.loss_fn.distillation_terms((F.normalize(query, dim=-1), F.normalize(positive, dim=-1)), teacher)
    assert terms["kd"] < 1e-10 and terms["kd_sim"] < 1e-10
    # ... and a reduced point (a prefix, a shallower layer) is held to the same full-size geometry, not to zero.
    shallow = module.encoder(batch["query"], [1])[1]
    assert similarity_distillation_loss((F.normalize(shallow[:, :8], dim=-1),), teacher[:1]) > 1e-4


def test_model_step_adds_the_distillation_terms_at_every_layer_and_dim():
    module, plain = distilling(), tiny_module("bert", rank=64, layers=3)
    plain.load_state_dict(module.state_dict())
    module.encoder.mel_rank = plain.encoder.mel_rank = 16
    batch = make_batch(module)
    loss, logs = module.model_step(batch, module.layers)
    base, _ = plain.model_step(batch, plain.layers)
    teacher = distilled_towards(module, batch, None)
    expected = base.detach()
    for layer in module.layers:  # by hand: mean over layers of the weighted sum over dims of the kd terms
        query = module.encoder(batch["query"], [layer])[layer]
        positive = module.encoder(batch["positive"], [layer])[layer]
        for dim, weight in zip(module.dims, module.dim_weights):
            student = (F.normalize(query[:, :dim], dim=-1), F.normalize(positive[:, :dim], dim=-1))
            kd = 10.0 * similarity_distillation_loss(student, teacher)
            if dim == module.encoder.backbone.hidden_size:  # the vector term: where the width is the teacher's only
                kd = kd + F.mse_loss(student[0], teacher[0]) + F.mse_loss(student[1], teacher[1])
            expected = expected + weight * kd.detach() / len(module.layers)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert logs["loss/kd_sim"] > 0


def with_bitext_target(kind: str, target: str):
    """A distilling module with ``kd_bitext_target=target``, one with the default and the same weights, a bitext
    and a retrieval batch, and the first module's last-layer vectors of the bitext batch."""
    extra = {} if kind == "model" else {"kd_teacher": "self"}
    module = distilling(kd_bitext_target=target, **extra)
    own = distilling(**extra)
    own.load_state_dict(module.state_dict())
    depth = module.encoder.backbone.depth
    bitext, retrieval = make_batch(module, task="bitext"), make_batch(module, task="retrieval")
    with torch.no_grad():
        last = (module.encoder(bitext["query"], [depth])[depth], module.encoder(bitext["positive"], [depth])[depth])
    return module, own, bitext, retrieval, last


@pytest.mark.parametrize("kind", ["model", "self"])
def test_bitext_translations_can_be_held_to_their_sources_teacher_vectors(kind):
    # kd_bitext_target=query: a bitext batch's positives take the teacher's vectors of their queries (the source
    # sentences); other tasks keep their own, and the default keeps its own everywhere.
    source, own, bitext, retrieval, last = with_bitext_target(kind, "query")
    with torch.no_grad():
        held = distilled_towards(source, bitext, last)
        torch.testing.assert_close(held[1], held[0], rtol=0, atol=0)
        torch.testing.assert_close(held[0], distilled_towards(own, bitext, last)[0], rtol=0, atol=1e-6)
        assert not torch.allclose(distilled_towards(own, bitext, last)[1], held[0], atol=1e-3)  # default: the translations'
        mixed = distilled_towards(source, retrieval, last)  # not bitext: each text keeps its own target
        torch.testing.assert_close(mixed[1], distilled_towards(own, retrieval, last)[1], rtol=0, atol=1e-6)
        # The terms now agree with the contrastive pull: a student that maps each translation onto its source's
        # teacher vector has zero distillation loss, which it cannot have under the default.
        student = (held[0], held[0])
        terms = source.loss_fn.distillation_terms(student, held)
        assert terms["kd"] < 1e-10 and terms["kd_sim"] < 1e-10
        assert own.loss_fn.distillation_terms(student, distilled_towards(own, bitext, last))["kd_sim"] > 1e-4


@pytest.mark.parametrize("kind", ["model", "self"])
def test_bitext_translations_can_be_left_out_of_distillation(kind):
    # kd_bitext_target=none: a bitext batch distils its queries only; the translations get no distillation
    # gradient at all, and other tasks keep both groups.
    free, own, bitext, retrieval, last = with_bitext_target(kind, "none")
    with torch.no_grad():
        held = distilled_towards(free, bitext, last)
        assert len(held) == 1
        torch.testing.assert_close(held[0], distilled_towards(own, bitext, last)[0], rtol=0, atol=1e-6)
        assert len(distilled_towards(free, retrieval, last)) == 2
    query, positive = (torch.nn.functional.normalize(x, dim=-1).requires_grad_() for x in last)
    terms = free.loss_fn.distillation_terms((query, positive), held)
    sum(terms.values()).backward()
    assert set(terms) == {"kd", "kd_sim"} and float(query.grad.abs().sum()) > 0
    assert positive.grad is None or float(positive.grad.abs().sum()) == 0
    # The same student under the default does pull the translations.
    query.grad = positive.grad = None
    sum(own.loss_fn.distillation_terms((query, positive), distilled_towards(own, bitext, last)).values()).backward()
    assert float(positive.grad.abs().sum()) > 0


def test_distillation_composes_with_gradient_caching():
    module = distilling("qwen3")
    module.encoder.mel_rank = 16
    batch = make_batch(module)
    loss, _ = module.model_step(batch, module.layers)
    module.zero_grad()
    loss.backward()
    want = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()
    step = module.cached_step(batch, module.layers, 4)
    cached_loss, _ = step.loss()
    step.backward(lambda surrogate: surrogate.backward())
    torch.testing.assert_close(cached_loss, loss.detach(), atol=1e-6, rtol=1e-5)
    got = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5 * float(grad.abs().max()) + 1e-6, rtol=0, msg=name)


def test_a_teacher_with_another_tokenizer_and_width_distils_the_geometry():
    # A tiny Qwen3 student (hidden 64, Qwen3 tokenizer) taught by a tiny BERT (hidden 32, MiniLM tokenizer).
    teacher = TeacherConfig(BackboneConfig(config=tiny_bert_config(30522, 2, 32), tokenizer=str(MINILM_DIR),
                                           max_seq_length=32))
    module = EmbeddingModule(tiny_backbone("qwen3", layers=2), mel=MEL(rank=32, min_rank=8), mll=MLL(), mrl=MRL(),
                             loss=ContrastiveLoss(**DISTIL), teacher=teacher)
    module.configure_model()
    module.init_mel_from_svd()
    batch = make_batch(module)
    vectors = distilled_towards(module, batch, None)
    assert vectors[0].shape == (6, 32)
    want = module.frozen_teacher.pooling(*_teacher_states(module, ["how do I reset my password"]))
    torch.testing.assert_close(vectors[0][:1], F.normalize(want, dim=-1), atol=1e-5, rtol=0)
    loss, logs = module.model_step(batch, module.layers)
    assert torch.isfinite(loss) and logs["loss/kd_sim"] > 0
    # The vector term applies where the widths agree: the student's 32-wide prefix against the 32-wide teacher.
    student = (torch.ones(6, 32) / 32**0.5, torch.ones(6, 32) / 32**0.5)
    assert set(module.loss_fn.distillation_terms(student, vectors)) == {"kd", "kd_sim"}
    assert set(module.loss_fn.distillation_terms(tuple(x.repeat(1, 2) for x in student), vectors)) == {"kd_sim"}


def _teacher_states(module, texts):
    teacher = module.frozen_teacher
    inputs = teacher.tokenizer(texts)
    depth = teacher.depth
    return teacher.backbone(inputs["input_ids"], inputs["attention_mask"], [depth])[depth], inputs["attention_mask"]


def test_distillation_alone_needs_no_contrastive_term():
    loss = ContrastiveLoss(in_batch=False, hard_negatives=False, kd_teacher="model", kd_similarity_weight=1.0)
    module = tiny_module("bert", rank=32, layers=2, loss=loss)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batch = make_batch(module, negatives=None)
    first = None
    for _ in range(5):
        value, logs = module.model_step(batch, module.layers)
        assert set(k for k in logs if k.startswith("loss/") and "@" not in k) == {"loss/kd_sim"}
        first = first if first is not None else float(value)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert float(value) < first  # the reduced points move toward the teacher's geometry


@pytest.mark.parametrize("kwargs, flag", [
    ({"kd_similarity_weight": -1.0}, "--model.loss.kd_similarity_weight"),
    ({"kd_teacher": "other"}, "--model.loss.kd_teacher"),
    ({"kd_bitext_target": "source"}, "--model.loss.kd_bitext_target"),
])
def test_bad_distillation_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        ContrastiveLoss(**kwargs)


def test_a_teacher_without_kd_teacher_model_is_refused():
    with pytest.raises(ValueError, match="--model.teacher is set but --model.loss.kd_teacher"):
        EmbeddingModule(tiny_backbone("bert"), teacher=TeacherConfig(), optimizer=OptimizerConfig())


def test_the_authors_feature_distillation_is_their_formula():
    """kd_feature_weight: at every MLL layer, MSE of raw features (queries, positives, negatives) against the frozen
    teacher's same layer, added once per layer and averaged over layers (written out here from the method)."""
    import dataclasses

    module = EmbeddingModule(tiny_backbone("bert", layers=3), mel=MEL(rank=64, min_rank=8), mll=MLL(), mrl=MRL(),
                             loss=ContrastiveLoss(kd_teacher="model", kd_feature_weight=0.5),
                             teacher=TeacherConfig(tiny_backbone("bert", layers=3)))  # another random model
    module.configure_model()
    module.init_mel_from_svd()
    batch = make_batch(module)
    layers = module.layers
    assert layers == (1, 2, 3) and module.teacher_layers == {1: 1, 2: 2, 3: 3}
    loss, logs = module.model_step(batch, layers)
    teacher = module.frozen_teacher
    expected = 0.0
    for layer in layers:
        for key in ("query", "positive", "negatives"):
            inputs = batch[key]
            mine = module.encoder.pooling(module.encoder.backbone(inputs["input_ids"], inputs["attention_mask"],
                                                                  [layer])[layer], inputs["attention_mask"])
            states = teacher.backbone(inputs["input_ids"], inputs["attention_mask"], [layer])[layer]
            expected = expected + F.mse_loss(mine, teacher.pooling(states, inputs["attention_mask"]))
    expected = expected / len(layers)
    assert float(logs["loss/kd_feature"]) == pytest.approx(float(expected), rel=1e-5)
    module.loss_fn = dataclasses.replace(module.loss_fn, kd_feature_weight=0.0)
    without, _ = module.model_step(batch, layers)
    assert float(loss - without) == pytest.approx(0.5 * float(expected), rel=1e-4)
    assert float(expected) > 0


def test_feature_distillation_needs_a_frozen_model():
    with pytest.raises(ValueError, match="--model.loss.kd_feature_weight .* set --model.loss.kd_teacher=model"):
        ContrastiveLoss(kd_feature_weight=1.0)
