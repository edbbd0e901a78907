"""The composed 3D loss: model_step equals, for every on/off combination of MEL, MLL and MRL, the mean over the MLL
layers of the weighted sum over the MRL dims of the base loss, recomputed here by hand, point by point."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_batch, tiny_module

COMBOS = list(itertools.product([True, False], repeat=3))
DEPTH, HIDDEN, RANK = 4, 64, 16  # tiny_module's defaults; RANK: a MEL rank below the maximum (32)
LAYERS = {True: (1, 2, 4), False: (4,)}
"""MLL on: the reference layers {1, 2, 4, ...} below the depth, plus the last; off: the last layer only."""
DIM_WEIGHTS = {
    True: {64: 1.0, 32: 1 / (2 * math.sqrt(2)), 16: 1 / (3 * math.sqrt(4)), 8: 1 / (4 * math.sqrt(8))},
    False: {64: 1.0},
}
"""MRL on: dims 8, 16, ... up to the hidden size, the i-th largest weighted 1 / (i * sqrt(hidden / dim));
off: the full embedding, weight 1."""


def info_nce(query, positive, negatives, query_hash, positive_hash, temperature):
    """The base loss at one (layer, dim) point, by hand: in-batch InfoNCE (other rows' positives as negatives,
    rows with the same query or positive text left out) plus InfoNCE against each query's own hard negatives."""
    size = query.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(size):
        # In-batch: query i against every positive; a false negative (same text as row i) is left out.
        scores = [query[i] @ positive[j] / temperature for j in range(size)
                  if j == i or (query_hash[j] != query_hash[i] and positive_hash[j] != positive_hash[i])]
        total = total - (query[i] @ positive[i] / temperature - torch.logsumexp(torch.stack(scores), 0)) / size
    for i in range(size):
        # Hard: query i against [its positive, its own negatives].
        scores = [query[i] @ positive[i]] + [query[i] @ n for n in negatives[i]]
        scores = torch.stack(scores) / temperature
        total = total - (scores[0] - torch.logsumexp(scores, 0)) / size
    return total


def expected_loss(module, batch, rank, layers, dim_weights) -> torch.Tensor:
    """mean over layers of sum over dims of weight * base loss on the L2-normalised dim-prefixes, at MEL rank."""
    per_query = batch["num_negatives"]
    temperature = module.loss_fn.temperature
    per_layer = []
    for layer in layers:
        with module.encoder.at_rank(rank):  # each text kind and each layer in a forward pass of its own
            query = module.encoder(batch["query"], [layer])[layer].double()
            positive = module.encoder(batch["positive"], [layer])[layer].double()
            negatives = module.encoder(batch["negatives"], [layer])[layer].double()
        negatives = negatives.reshape(query.shape[0], per_query, -1)  # row i's negatives: i*N .. i*N+N-1
        total = torch.zeros((), dtype=torch.float64)
        for dim, weight in dim_weights.items():
            q, p, n = (F.normalize(x[..., :dim], dim=-1) for x in (query, positive, negatives))
            base = info_nce(q, p, n, batch["query_hash"], batch["positive_hash"], temperature)
            # The base loss is mlembed's ContrastiveLoss (its two terms) at this point.
            terms = module.loss_fn(q.float(), p.float(), n.float(), query_hash=batch["query_hash"],
                                   positive_hash=batch["positive_hash"], use_in_batch=True)
            assert sorted(terms) == ["hard", "in_batch"]
            assert float(sum(terms.values())) == pytest.approx(float(base), abs=1e-5)
            total = total + weight * base
        per_layer.append(total)
    return sum(per_layer) / len(per_layer)


@pytest.mark.parametrize("kind", ["bert", "qwen3"])
@pytest.mark.parametrize(("mel", "mll", "mrl"), COMBOS, ids=lambda v: "on" if v else "off")
def test_model_step_is_the_mean_over_layers_of_the_weighted_sum_over_dims(kind, mel, mll, mrl):
    module = tiny_module(kind, mel=mel, mll=mll, mrl=mrl, layers=DEPTH, hidden=HIDDEN).eval()
    batch = make_batch(module)
    assert batch["num_negatives"] == 1
    rank = RANK if mel else None
    # The axes resolve as written out above.
    assert module.layers == LAYERS[mll]
    assert dict(zip(module.dims, module.dim_weights)) == pytest.approx(DIM_WEIGHTS[mrl], rel=1e-12)
    assert module.ranks == ((8, 16, 32) if mel else ())

    if mel:
        module.encoder.mel_rank = rank  # what RankSampler does before a training step
    # Expected values are float64 from separate forward passes; model_step is float32 on one stacked pass:
    # they agree to 1e-6 relative (about 4e-6 absolute on a loss of 4), float32's own precision.
    with torch.no_grad():
        loss, logs = module.model_step(batch, module.layers)
        want = expected_loss(module, batch, rank, LAYERS[mll], DIM_WEIGHTS[mrl])
        assert float(loss) == pytest.approx(float(want), abs=1e-6, rel=1e-6)
        # Each layer's loss is logged: its weighted sum over dims.
        for layer in LAYERS[mll]:
            alone = expected_loss(module, batch, rank, [layer], DIM_WEIGHTS[mrl])
            assert float(logs[f"loss/mll@{layer}"]) == pytest.approx(float(alone), abs=1e-6, rel=1e-6)
        if mel:  # the rank is part of the point: the full rank gives another loss
            full = expected_loss(module, batch, None, LAYERS[mll], DIM_WEIGHTS[mrl])
            assert abs(float(full) - float(want)) > 1e-4
            assert module.encoder.mel_rank == rank
