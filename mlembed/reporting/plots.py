"""PNG plots of a grid: score vs dim per depth, score vs rank, and Pareto fronts of score vs cost."""

from __future__ import annotations

from pathlib import Path

from mlembed.evaluation.budget import pareto_front
from mlembed.evaluation.result import GridResult, PointScore

AXES = ("rank", "depth", "dim")


def write_plots(result: GridResult, out_dir: str | Path) -> list[Path]:
    """Write ``score_vs_dim.png``, ``score_vs_rank.png``, ``pareto_params.png`` and ``pareto_bytes.png``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    out = Path(out_dir)
    scores = {p.point: p for p in result.points()}
    ranks, depths, dims = result.axes()
    paths = [
        _lines(out / "score_vs_dim.png", scores, x_axis=("dim", dims), fixed=("rank", ranks[-1]), depths=depths),
        _lines(out / "score_vs_rank.png", scores, x_axis=("rank", ranks), fixed=("dim", dims[-1]), depths=depths),
        _pareto(out / "pareto_params.png", list(scores.values()), "params", "parameters"),
        _pareto(out / "pareto_bytes.png", list(scores.values()), "bytes_per_vector", "bytes per vector"),
    ]
    return paths


def write_arm_plots(arms: list[tuple[str, GridResult]], out_dir: str | Path) -> list[Path]:
    """``arms_<score>.png``: for each axis, each arm's score as that axis shrinks with the others full.

    One figure for the out-of-domain score and one for the in-domain score (or the overall score when the tasks
    are not split), so the starting model and the control arm are drawn beside the trained model.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    split = bool(arms[-1][1].in_domain) and set(arms[-1][1].main_metrics) - arms[-1][1].in_domain
    kinds = [("out_of_domain", False), ("in_domain", True)] if split else [("score", None)]
    return [_arms(out / f"arms_{kind}.png", arms, domain, kind.replace("_", "-")) for kind, domain in kinds]


def _arms(path: Path, arms: list[tuple[str, GridResult]], domain: bool | None, label: str) -> Path:
    import matplotlib.pyplot as plt

    axes_values = arms[-1][1].axes()
    full = tuple(values[-1] for values in axes_values)
    fig, panels = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for i, (panel, values) in enumerate(zip(panels, axes_values)):
        for name, grid in arms:
            scores = {p.point: p for p in grid.points()}
            ys = []
            for v in values:
                point = scores.get(tuple(v if j == i else full[j] for j in range(3)))
                value = None if point is None else (point.score if domain is None else point.domain_score(domain))
                ys.append(float("nan") if value is None else value)
            panel.plot(range(len(values)), ys, marker="o", label=name)
        panel.set_xticks(range(len(values)), ["full" if v is None else str(v) for v in values])
        panel.set_xlabel(f"{AXES[i]} (others full)")
        panel.grid(alpha=0.3)
    panels[0].set_ylabel(f"{label} score")
    panels[0].legend()
    fig.suptitle(f"{label} score of each arm as one axis shrinks")
    return _save(fig, path)


def _lines(path: Path, scores: dict, *, x_axis: tuple[str, list], fixed: tuple[str, object], depths: list) -> Path:
    """One line per depth of score against ``x_axis``, the other axis held at ``fixed`` (its full value)."""
    import matplotlib.pyplot as plt

    name, values = x_axis
    fig, ax = plt.subplots(figsize=(6, 4))
    positions = range(len(values))  # categorical: ranks or dims may be None (full)
    for depth in depths:
        ys = [_score(scores, **{name: v, fixed[0]: fixed[1], "depth": depth}) for v in values]
        ax.plot(positions, ys, marker="o", label=f"depth {depth if depth is not None else 'full'}")
    ax.set_xticks(list(positions), ["full" if v is None else str(v) for v in values])
    ax.set_xlabel(name)
    ax.set_ylabel("score")
    ax.set_title(f"score vs {name} ({fixed[0]} {'full' if fixed[1] is None else fixed[1]})")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _pareto(path: Path, points: list[PointScore], cost: str, label: str) -> Path:
    """All points, with the Pareto front drawn and labelled."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([getattr(p, cost) for p in points], [p.score for p in points], s=12, alpha=0.5, label="grid points")
    front = pareto_front(points, cost)
    ax.plot([getattr(p, cost) for p in front], [p.score for p in front], "r-o", markersize=4, label="Pareto front")
    for p in front:
        ax.annotate(p.label(), (getattr(p, cost), p.score), fontsize=6, xytext=(3, -8), textcoords="offset points")
    if min(getattr(p, cost) for p in points) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("score")
    ax.set_title(f"score vs {label}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _score(scores: dict, *, rank, depth, dim) -> float:
    point = scores.get((rank, depth, dim))
    return float("nan") if point is None else point.score


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
