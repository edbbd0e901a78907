"""Mined negatives for the demo's dialogues: what mining costs, and what it changes out of domain.

The demo's stage-2 dialogue records (chatterbot-corpus message -> reply, about 6,200 of them) carry negatives that
no model chose: replies of similar length, drawn at random. This script mines model-chosen ones with
``mlembed mine`` and the demo's own starting model (all-MiniLM-L6-v2), then trains the demo twice with everything
else equal (same seed, same records in the same shards, only the dialogue records' negatives differ):

- ``as built``: the demo's negatives (trained once: a later recipe reuses its grid);
- ``mined``: ``mlembed mine`` per source with ``--recipe docs`` (sentence-transformers' documented example, not
  tuned here: ``--range-min 10 --range-max 50 --max-score 0.8 --relative-margin 0.05 --sampling random``) or
  ``--recipe top`` (the 9 nearest replies scoring at most 0.8).

Each run scores its 3D-ML model on the grid (the starting model and the plain fine-tune are the same in both runs,
so they are left out). Printed: the seconds ``mlembed mine`` took (the whole command, model loading included), and
each run's out-of-domain score (the mean of Lee STS, Wikipedia retrieval and Sphinx bitext) at the README's key
points and over the whole grid, with the in-domain dialogue score beside it.

    python benchmarks/bench_demo_mining.py [--recipe docs|top] [--data data/demo] [--out runs/demo-mining]

About 15 minutes on 2 CPU cores (two demo trainings, each with one grid); ``--mine-only`` times the mining
alone, ``--report-only`` prints the table of finished runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import yaml
from common import minilm_dir

from mlembed.data.manifest import ShardManifest
from mlembed.data.records import Record
from mlembed.data.shards import write_records
from mlembed.data.stream import read_samples
from mlembed.demo.data import build_demo

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    # sentence-transformers' documented example, with the demo's 9 negatives
    "docs": ["--num-negatives", "9", "--range-min", "10", "--range-max", "50", "--max-score", "0.8",
             "--relative-margin", "0.05", "--sampling", "random", "--seed", "0"],
    # the 9 nearest replies under a ceiling: every row gets its negatives
    "top": ["--num-negatives", "9", "--max-score", "0.8", "--sampling", "top"],
}
"""``mlembed mine`` flags of each ``--recipe``."""
OUT_OF_DOMAIN = {"lee": "spearman", "wiki": "ndcg@10", "sphinx": "accuracy"}
IN_DOMAIN = {"dialogue": "ndcg@10"}
KEY_POINTS = {"full": (None, None, None), "rank 32": (32, None, None), "rank 64": (64, None, None),
              "depth 2": (None, 2, None), "dim 64": (None, None, 64), "rank 64, depth 2, dim 64": (64, 2, 64)}
RECORD_FIELDS = [f.name for f in fields(Record) if f.name != "languages"]


def stage2_records(data: Path) -> list[dict]:
    """The stage-2 training samples of the demo build, in manifest order."""
    return stage2_records_of(data / "stage2" / "train")


def stage2_records_of(directory: Path) -> list[dict]:
    """The training samples of a shard directory, in manifest order."""
    manifest = ShardManifest.load(directory)
    return list(read_samples([str(directory / info.path) for info in manifest.shards if info.split == "train"]))


def mine_dialogues(rows: list[dict], work: Path, recipe: str = "docs") -> tuple[dict[str, list[str]], float]:
    """Run ``mlembed mine`` over the dialogue rows; their new negatives by id, and the command's seconds."""
    source = work / "dialogue.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    target = work / f"mined-{recipe}"
    command = [sys.executable, "-m", "mlembed", "mine", "--model", minilm_dir(), "--input", str(source),
               "--output", str(target), "--overwrite", *RECIPES[recipe]]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    mined = [json.loads(line) for line in (target / "dialogue.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r["negatives"] for r in mined}, seconds


def write_arm(rows: list[dict], negatives: dict[str, list[str]], out: Path) -> Path:
    """The stage-2 shards of one arm: every row as read, the dialogue rows' negatives replaced by ``negatives``."""
    records = [Record(**{k: row[k] for k in RECORD_FIELDS if k in row}) for row in rows]
    for record in records:
        if record.id in negatives:
            record.negatives = negatives[record.id]
    write_records(records, out, shard_size=2000, overwrite=True)
    return out


def arm_config(shards: Path, root: Path, data: Path) -> Path:
    """configs/demo.yaml with the arm's stage-2 shards, its own run folder, and the 3D-ML grid only."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    config["trainer"]["default_root_dir"] = str(root)
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("GridEvaluation"):
            callback["init_args"].update(tasks=[*OUT_OF_DOMAIN, *IN_DOMAIN], data_dir=str(data), baseline=False,
                                         control=False)
    init = config["data"]["init_args"]
    init["build_demo"] = str(data)
    init["stage1"]["shards"] = [str(data / "stage1" / "train")]
    init["stage2"]["shards"] = [str(shards)]
    init["stage2"]["val_shards"] = [str(data / "stage2" / "val")]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def grid_scores(root: Path) -> dict[tuple, dict[str, float]]:
    """(rank, depth, dim) -> main metric per task, from the run's ``grid.csv`` (full values as None)."""
    [table] = sorted(root.glob("lightning_logs/version_*/grid/grid.csv"),
                     key=lambda path: int(path.parent.parent.name.split("_")[1]))[-1:]  # the latest run's
    scores: dict[tuple, dict[str, float]] = {}
    wanted = {**OUT_OF_DOMAIN, **IN_DOMAIN}
    with table.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if wanted.get(row["task"]) == row["metric"]:
                point = tuple(None if row[a] == "" else int(row[a]) for a in ("rank", "depth", "dim"))
                scores.setdefault(point, {})[row["task"]] = float(row["value"])
    return scores


def full_values(scores: dict[tuple, dict]) -> tuple:
    """The grid's largest rank, depth and dim (what None stands for at a key point)."""
    return tuple(max((p[i] for p in scores if p[i] is not None), default=None) for i in range(3))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def report(arms: dict[str, dict[tuple, dict[str, float]]], seconds: float | None) -> str:
    names = list(arms)
    lines = []
    if seconds is not None:
        lines += [f"mlembed mine over the stage-2 dialogue records: {seconds:.1f} s", ""]
    lines += ["out-of-domain score (mean of " + ", ".join(OUT_OF_DOMAIN) + "); in-domain dialogue ndcg@10 after /",
              "", "| point | " + " | ".join(names) + " | mined - as built |", "|---|" + "---|" * (len(names) + 1)]
    any_grid = next(iter(arms.values()))
    full = full_values(any_grid)
    rows = {label: tuple(f if v is None else v for v, f in zip(point, full, strict=True))
            for label, point in KEY_POINTS.items()}
    for label, point in rows.items():
        if not all(point in grid for grid in arms.values()):
            continue
        ood = {n: mean(arms[n][point][t] for t in OUT_OF_DOMAIN) for n in names}
        cells = [f"{ood[n]:.4f} / {arms[n][point]['dialogue']:.4f}" for n in names]
        lines.append(f"| {label} {point} | " + " | ".join(cells) + f" | {ood[names[-1]] - ood[names[0]]:+.4f} |")
    points = sorted(set.intersection(*(set(g) for g in arms.values())), key=str)
    ood_all = {n: mean(mean(arms[n][p][t] for t in OUT_OF_DOMAIN) for p in points) for n in names}
    dia_all = {n: mean(arms[n][p]["dialogue"] for p in points) for n in names}
    lines.append(f"| mean of {len(points)} points | "
                 + " | ".join(f"{ood_all[n]:.4f} / {dia_all[n]:.4f}" for n in names)
                 + f" | {ood_all[names[-1]] - ood_all[names[0]]:+.4f} |")
    better = sum(mean(arms[names[-1]][p][t] for t in OUT_OF_DOMAIN) > mean(arms[names[0]][p][t] for t in OUT_OF_DOMAIN)
                 for p in points)
    lines += ["", f"mined ahead out of domain at {better} of {len(points)} points"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/demo", help="the demo build (made there when missing)")
    parser.add_argument("--out", default="runs/demo-mining", help="where the mined records, shards and runs go")
    parser.add_argument("--recipe", choices=RECIPES, default="docs", help="the mining flags: " + "; ".join(
        f"{name}: {' '.join(flags)}" for name, flags in RECIPES.items()))
    parser.add_argument("--mine-only", action="store_true",
                        help="mine and write both arms' shards and configs, but train nothing (prints the seconds)")
    parser.add_argument("--retrain", action="store_true",
                        help="train an arm again even when --out holds its finished grid (by default it is reused)")
    parser.add_argument("--report-only", action="store_true", help="print the table of two finished runs in --out")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    arms = {"as built": out / "length", f"mined ({args.recipe})": out / f"arm-{args.recipe}"}
    seconds = None
    if not args.report_only:
        build_demo(data)
        out.mkdir(parents=True, exist_ok=True)
        rows = stage2_records(data)
        dialogue = [r for r in rows if r["source"].startswith("dialogue-")]
        mined, seconds = mine_dialogues(dialogue, out, args.recipe)
        few = sum(len(negatives) < 3 for negatives in mined.values())
        print(f"mined {len(mined)} dialogue records in {seconds:.1f} s; {few} got fewer than the 3 a stage-2 "
              f"retrieval row draws (the loader pads them with other rows' positives)", flush=True)
        for name, root in arms.items():
            root.mkdir(parents=True, exist_ok=True)
            shards = write_arm(rows, {} if name == "as built" else mined, root / "stage2-train")
            config = arm_config(shards, root, data)
            finished = any(root.glob("lightning_logs/version_*/grid/grid.csv"))
            if not args.mine_only and (args.retrain or not finished):
                subprocess.run([sys.executable, "-m", "mlembed", "fit", "--config", str(config)], check=True,
                               stdin=subprocess.DEVNULL)
        if args.mine_only:
            return
    print(report({name: grid_scores(root) for name, root in arms.items()}, seconds))


if __name__ == "__main__":
    main()
