"""Parity with sentence-transformers where the two define the same loss: value and gradient must match.

- MRL = ``MatryoshkaLoss(MultipleNegativesRankingLoss)``: same dims, weight 1 each, scale 20 = temperature 0.05,
  cosine similarity, in-batch negatives (no false-negative masking on the mlembed side, which ST lacks).
- MRL + MLL on every layer = Matryoshka2dLoss's composition, ``AdaptiveLayerLoss(MatryoshkaLoss(...))``, with
  every layer and dim each step and no KL term. Its "prior layers" are the entries 0 .. L-1 of the model's
  hidden states, entry 0 being the embedding output, which no MLL layer is (mlembed counts layers from 1); with
  that entry weighted 0, the last layer weighted 1/L and the prior ones 1 (sentence-transformers divides them by
  their count, L), its total is the mean of the L layer losses: mlembed's MLL (the reference's average).

Both run the real all-MiniLM-L6-v2 (shipped in a package) on the same pairs, in eval mode (no dropout).
"""

from __future__ import annotations

import pytest
import torch

from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig
from mlembed.losses import ContrastiveLoss
from mlembed.module import EmbeddingModule
from mlembed.pooling import MeanPooling
from mlembed.text import text_hash
from tests.conftest import MINILM_DIR
from tests.helpers import POSITIVES, QUERIES

DIMS = [384, 128, 32]
MAX_LEN = 24
LAYERS = 6
PROBE = "encoder.layer.0.attention.self.query.weight"
"""A weight of the first layer, which every layer's loss reaches: its gradient is compared."""


def st_loss_and_grad(two_d: bool) -> tuple[float, torch.Tensor]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(str(MINILM_DIR), device="cpu")
    model.max_seq_length = MAX_LEN
    model.eval()
    base = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    if two_d:
        matryoshka = losses.MatryoshkaLoss(model, base, DIMS, n_dims_per_step=-1)
        loss_fn = losses.AdaptiveLayerLoss(model, matryoshka, n_layers_per_step=-1, last_layer_weight=1 / LAYERS,
                                           prior_layers_weight=1.0, kl_div_weight=0.0,
                                           layer_weighting=lambda index: 0.0 if index == 0 else 1.0)
    else:
        loss_fn = losses.MatryoshkaLoss(model, base, DIMS)
    features = [model.tokenize(QUERIES), model.tokenize(POSITIVES)]
    loss = loss_fn(features, torch.zeros(len(QUERIES)))
    loss.backward()
    (grad,) = [p.grad for name, p in model.named_parameters() if name.endswith(PROBE)]
    return float(loss), grad.clone()


def mlembed_loss_and_grad(two_d: bool) -> tuple[float, torch.Tensor]:
    module = EmbeddingModule(
        BackboneConfig(pretrained=str(MINILM_DIR), max_seq_length=MAX_LEN),
        pooling=MeanPooling(),
        mel=MEL(enabled=False),
        mll=MLL(enabled=two_d, layers=list(range(1, LAYERS + 1))),
        mrl=MRL(dims=DIMS, weights=[1.0] * len(DIMS)),
        loss=ContrastiveLoss(temperature=0.05, mask_false_negatives=False),
    )
    module.configure_model()
    module.eval()
    tokenize = module.encoder.text_tokenizer
    batch = {"query": tokenize(QUERIES), "positive": tokenize(POSITIVES), "num_negatives": 0,
             "query_hash": torch.tensor([text_hash(t) for t in QUERIES]),
             "positive_hash": torch.tensor([text_hash(t) for t in POSITIVES]), "task": "retrieval"}
    loss, _ = module.model_step(batch, module.layers)
    loss.backward()
    weight = module.encoder.backbone.model.encoder.layer[0].attention.self.query.weight
    return float(loss), weight.grad.clone()


@pytest.mark.parametrize("two_d", [False, True], ids=["MRL=MatryoshkaLoss", "MRL+MLL=AdaptiveLayerLoss(MatryoshkaLoss)"])
def test_the_loss_and_its_gradient_equal_sentence_transformers(two_d):
    st_value, st_grad = st_loss_and_grad(two_d)
    value, grad = mlembed_loss_and_grad(two_d)
    assert value == pytest.approx(st_value, rel=1e-5)
    assert st_grad.abs().sum() > 0
    torch.testing.assert_close(grad, st_grad, rtol=1e-4, atol=1e-7)
