"""One training step under the authors' settings equals their formulas, written here from the method's text.

The authors' loss (ML-Embed, as their training script computes it), for each MLL layer l and each MRL width
(largest first, the i-th weighted 1 / (i sqrt(d / dim))), on L2-normalised prefixes, temperature 0.05:

- in-batch: cross-entropy of this rank's queries against the positives of ALL ranks, gathered with no gradient
  at all (not even through this rank's own positives), label = row + rank x batch;
- hard: cross-entropy of each query against [its positive, its own hard negatives], label 0;

summed over widths, the two terms added, summed over layers and divided by the number of layers. Two DDP ranks
(gloo subprocesses) average their gradients. Nothing is masked. The test computes all of it in one process
from the module's own per-layer features (the forward is the model; the objective is what is checked) and
compares the loss of each rank and the gradient of every trainable tensor, to 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlembed.losses import ContrastiveLoss
from tests.distributed.common import MEL_RANK, PER_RANK, WORLD, grads_of, launch
from tests.distributed.test_gather import assert_grads
from tests.helpers import make_batch, tiny_module

pytestmark = pytest.mark.distributed
TEMPERATURE = 0.05


def authors_module():
    """Tiny Qwen3 (3 layers, hidden 64) with MEL (factors of rank 32 used at rank 16), MLL and MRL, the authors'
    loss settings."""
    torch.manual_seed(0)
    module = tiny_module("qwen3", rank=32, layers=3, hidden=64,
                         loss=ContrastiveLoss(gather_grad="none", mask_false_negatives=False))
    module.encoder.mel_rank = MEL_RANK
    return module


def batch_of(module) -> dict:
    """Six queries with their positives and one hard negative each (a retrieval source: both terms apply)."""
    return make_batch(module)


def authors_rank_loss(queries, positives, negatives, rank: int) -> torch.Tensor:
    """One rank's loss. Arguments: layer -> [W*B, d] features of every rank's rows (negatives: [W*B, N, d])."""
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    labels = torch.arange(PER_RANK) + PER_RANK * rank
    total = 0.0
    for layer in queries:
        q, p, n = queries[layer][rows], positives[layer][rows], negatives[layer][rows]
        gathered = positives[layer].detach()  # every rank's positives, no gradient
        d = q.shape[-1]
        widths = sorted({2 ** i for i in range(3, 15) if 2 ** i < d} | {d}, reverse=True)
        for i, dim in enumerate(widths, start=1):
            weight = 1 / (i * math.sqrt(d / dim))
            qn = F.normalize(q[:, :dim], dim=-1)
            in_batch = F.cross_entropy(qn @ F.normalize(gathered[:, :dim], dim=-1).T / TEMPERATURE, labels)
            candidates = F.normalize(torch.cat([p.unsqueeze(1), n], dim=1)[..., :dim], dim=-1)
            hard = F.cross_entropy((qn.unsqueeze(1) * candidates).sum(-1) / TEMPERATURE,
                                   torch.zeros(PER_RANK, dtype=torch.long))
            total = total + weight * (in_batch + hard)
    return total / len(queries)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("authors")
    launch("authors_worker.py", out)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_one_step_equals_the_authors_formulas(ddp):
    module = authors_module()
    batch = batch_of(module)
    layers = module.layers
    assert layers == (1, 2, 3) and module.encoder.mel_rank == MEL_RANK
    queries = module.encoder(batch["query"], layers)
    positives = module.encoder(batch["positive"], layers)
    negatives = {layer: x.unsqueeze(1) for layer, x in module.encoder(batch["negatives"], layers).items()}
    losses = [authors_rank_loss(queries, positives, negatives, rank) for rank in range(WORLD)]
    (sum(losses) / WORLD).backward()  # DDP averages the ranks' gradients
    assert [r["loss"] for r in ddp] == pytest.approx([float(x) for x in losses], rel=1e-5)
    want = grads_of(module)
    assert {name.split(".")[-1] for name in want} >= {"A", "B"}  # MEL's factors are trained
    assert_grads(ddp[0]["grads"], want)
    assert_grads(ddp[1]["grads"], want)
