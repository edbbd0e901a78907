"""The (rank x depth x dim) grid: every point of ``encoder.points()`` scored on every task.

Each task embeds its texts once per (rank, depth); all dim prefixes are cut from that one pass, so a grid costs
``|ranks| x |depths|`` encoder passes per task, not ``|ranks| x |depths| x |dims|``. Encoders that also offer
``embed_layers`` (see shared_depths.py) serve all depths of a rank from one pass of the deepest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from mlembed.encoder import PointEncoder
from mlembed.evaluation.result import GridResult, GridRow
from mlembed.evaluation.shared_depths import share_depths
from mlembed.evaluation.task import Task


def evaluate_grid(
    encoder: PointEncoder,
    tasks: Sequence[Task],
    *,
    ranks: Sequence[int | None] | None = None,
    depths: Sequence[int | None] | None = None,
    dims: Sequence[int | None] | None = None,
    bytes_per_float: int = 4,
    progress: bool = True,
) -> GridResult:
    """Score every (rank, depth, dim) point on every task.

    Args:
        encoder: the model (an ``nn.Module`` is put in eval mode and restored after).
        tasks: what to score.
        ranks: MEL ranks (default: ``encoder.points().ranks``).
        depths: depths (default: the trained ones).
        dims: MRL prefixes (default: the trained ones).
        bytes_per_float: storage of one vector component (4: fp32, 2: fp16, 1: int8) for ``bytes_per_vector``.
        progress: show a tqdm bar over (rank, depth) passes.
    """
    if bytes_per_float < 1:
        raise ValueError(f"--bytes-per-float ({bytes_per_float}) must be at least 1")
    if not tasks:
        raise ValueError("--tasks: nothing to evaluate")
    trained = encoder.points()
    ranks, depths = list(ranks or trained.ranks), list(depths or trained.depths)
    dims = list(dims or trained.dims)
    rows: list[GridRow] = []
    # Rank outermost: SharedDepths keeps one rank's passes cached while its depths are scored.
    passes = [(rank, depth, task) for rank in ranks for depth in depths for task in tasks]
    model = share_depths(encoder, depths)
    with eval_mode(encoder), tqdm(passes, desc="grid", unit="pass", disable=None if progress else True) as bar:
        # The widest vector served: a loaded model's own dim, else the widest trained one (the full width: MRL
        # always trains it). A prefix wider than the vector would be scored at full width under the wider label.
        width = getattr(encoder, "dim", None) or max(d for d in trained.dims if d is not None)
        wide = [dim for dim in dims if dim is not None and not 1 <= dim <= width]
        if wide:
            raise ValueError(f"--dims {wide[0]} is outside [1, {width}] (the model's embedding size)")
        for rank, depth, task in bar:
            bar.set_postfix_str(f"rank={rank} depth={depth} task={task.name}")
            params = encoder.num_parameters(rank=rank, depth=depth)
            for dim, metrics in task.evaluate(model, rank=rank, depth=depth, dims=dims).items():
                width = dim if dim is not None else _full_width(encoder, rank, depth)
                rows += [GridRow(rank, depth, dim, params, width * bytes_per_float, task.name, metric, value)
                         for metric, value in metrics.items()]
    return GridResult(rows, {task.name: task.main_metric for task in tasks},
                      in_domain=frozenset(task.name for task in tasks if getattr(task, "in_domain", False)))


@contextlib.contextmanager
def eval_mode(encoder: PointEncoder) -> Iterator[None]:
    """Eval mode and no autograd while evaluating; the module's train/eval mode is restored after."""
    module = encoder if isinstance(encoder, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if module is not None:
            module.train(was_training)


def _full_width(encoder: PointEncoder, rank: int | None, depth: int | None) -> int:
    """The hidden size (for ``bytes_per_vector`` when no dim prefix is asked for)."""
    return int(encoder.embed(["."], rank=rank, depth=depth, batch_size=1).shape[-1])
