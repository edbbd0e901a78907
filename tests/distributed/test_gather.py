"""In-batch negatives gathered across 2 DDP ranks (gloo, subprocesses) against one process with the whole batch.

``all`` must give the single-process loss and gradients exactly (labels offset by rank, gradients through every
rank's positives); ``local`` and ``none`` must match their definitions, simulated in one process, and differ
from ``all``; with ``none`` the in-batch term sends no gradient into the positives at all.
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed.common import PER_RANK, WORLD, build_module, full_batch, grads_of, launch, rank_rows

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    """name -> {"loss": [per rank], "grads": rank 0's averaged gradients}, from one torchrun of gather_worker."""
    out = tmp_path_factory.mktemp("gather")
    launch("gather_worker.py", out)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    for name in ranks[0]:  # DDP leaves the same averaged gradient on every rank
        for param, grad in ranks[0][name]["grads"].items():
            torch.testing.assert_close(ranks[1][name]["grads"][param], grad, atol=1e-7, rtol=0)
    return {name: {"loss": [r[name]["loss"] for r in ranks], "grads": ranks[0][name]["grads"]} for name in ranks[0]}


def single_process(mode: str, hard: bool) -> tuple[float, dict]:
    """Loss and gradients of one process with the whole batch of WORLD * PER_RANK rows."""
    module = build_module(mode, hard=hard)
    loss, _ = module.model_step(full_batch(module, negatives=hard), module.layers)
    loss.backward()
    return loss.item(), grads_of(module)


def simulated_ranks(mode: str) -> tuple[list[float], dict]:
    """The DDP step of ``mode`` simulated in one process (in-batch term only).

    Each simulated rank's gather returns its own rows (gradient per ``mode``) followed by the other rank's rows
    for the same call (gradient only for ``all``). Own rows first keeps label ``i`` correct at rank 0's offset;
    the in-batch softmax does not depend on the column order. DDP averages: the total is the mean over ranks.
    """
    module = build_module(mode, hard=False)
    batch = full_batch(module, negatives=False)
    layers = module.layers
    queries = module.encoder(batch["query"], layers)  # layer -> [W*B, H]
    docs = module.encoder(batch["positive"], layers)

    def rank_loss(rank: int, gather) -> torch.Tensor:
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        module.gather = gather  # the context's gather, as EmbeddingModule.gather would be under DDP
        mine = ({k: v[rows] for k, v in queries.items()}, {k: v[rows] for k, v in docs.items()})
        return module.loss_on_embeddings(rank_rows(batch, rank), *mine, layers)[0]

    calls: list[list[torch.Tensor]] = [[], []]
    for rank in range(WORLD):  # record what each rank would contribute to each gather call, in call order
        rank_loss(rank, lambda x, m, rank=rank: calls[rank].append(x) or torch.cat([x, x]))
    losses = []
    for rank in range(WORLD):
        other = iter(calls[1 - rank])

        def gather(x, m, other=other):
            theirs = next(other)
            return torch.cat([x.detach() if m == "none" else x, theirs if m == "all" else theirs.detach()])

        losses.append(rank_loss(rank, gather))
    (sum(losses) / WORLD).backward()
    return [float(x) for x in losses], grads_of(module)


def assert_grads(got: dict, want: dict, tol: float = 1e-5) -> None:
    """Equal to ``tol`` of each tensor's largest entry (plus 1e-6 for gradients that are 0 in exact arithmetic)."""
    assert got.keys() == want.keys()
    for name in want:
        atol = tol * float(want[name].abs().max()) + 1e-6
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=0, msg=name)


def differs(a: dict, b: dict) -> bool:
    return any(not torch.allclose(a[n], b[n], atol=1e-4, rtol=1e-3) for n in a)


@pytest.mark.parametrize("name", ["all", "all_cached"])
def test_two_ranks_with_gather_all_equal_one_process_with_twice_the_batch(ddp, name):
    """MEL (rank 16) + MLL {1, 2, 3} + MRL + hard negatives; ``all_cached`` adds gradient caching (chunks of 2)."""
    loss, grads = single_process("all", hard=True)
    assert sum(ddp[name]["loss"]) / WORLD == pytest.approx(loss, rel=1e-5)
    assert_grads(ddp[name]["grads"], grads)


def test_local_and_none_match_their_definitions_and_differ_from_all(ddp):
    loss, all_grads = single_process("all", hard=False)
    assert_grads(ddp["all_in_batch"]["grads"], all_grads)
    for mode in ("local", "none"):
        losses, want = simulated_ranks(mode)
        got = ddp[f"{mode}_in_batch"]
        assert got["loss"] == pytest.approx(losses, rel=1e-5)
        assert sum(got["loss"]) / WORLD == pytest.approx(loss, rel=1e-5)  # the mode changes gradients, not the loss
        assert_grads(got["grads"], want)
        assert differs(got["grads"], all_grads)
    assert differs(ddp["local_in_batch"]["grads"], ddp["none_in_batch"]["grads"])


def test_none_sends_no_gradient_into_the_positives(ddp):
    """Rows of MEL's A for tokens that only the positives contain: zero under ``none``, nonzero otherwise."""
    module = build_module()
    batch = full_batch(module, negatives=False)
    only_positive = sorted(set(batch["positive"]["input_ids"].flatten().tolist())
                           - set(batch["query"]["input_ids"].flatten().tolist()))
    assert len(only_positive) > 5
    name = "encoder.backbone.model.embeddings.word_embeddings.A"
    rows = {mode: ddp[f"{mode}_in_batch"]["grads"][name][only_positive] for mode in ("none", "local", "all")}
    assert rows["none"].abs().max() == 0
    assert rows["local"].abs().amax(-1).min() > 0 and rows["all"].abs().amax(-1).min() > 0
