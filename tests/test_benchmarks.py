"""The benchmark scripts behind the README's numbers still import and run (at toy sizes: no timing is asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("bench_*.py"))


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


HELP_ALL = r"""
import contextlib, io, json, runpy, sys
sys.path.insert(0, sys.argv[1])  # as `python benchmarks/NAME.py` puts the scripts' folder first
helps = {}
for script in sys.argv[2:]:
    sys.argv, buffer, code = [script, "--help"], io.StringIO(), None
    try:
        with contextlib.redirect_stdout(buffer):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    helps[script] = {"code": code, "help": buffer.getvalue()}
print("RESULT " + json.dumps(helps))
"""


def test_every_benchmark_imports_and_documents_its_flags():
    # Every script's --help in one interpreter: torch and transformers are imported once, not once per script.
    helps = json.loads(run("-c", HELP_ALL, str(ROOT / "benchmarks"), *map(str, SCRIPTS)).split("RESULT ", 1)[1])
    assert set(helps) == set(map(str, SCRIPTS))
    for script, shown in helps.items():
        assert shown["code"] in (0, None) and "usage:" in shown["help"], script


def test_mel_benchmark_prints_both_ratios_at_a_toy_shape():
    out = run(str(ROOT / "benchmarks/bench_mel.py"), "--ids", "random", "--vocab", "4000", "--hidden", "32",
              "--rank", "16", "--k", "16", "--batch", "2", "--seq", "8", "--repeats", "1", "--threads", "1")
    ratios = dict(re.findall(r"(time ratio|memory ratio|FLOP ratio).*?:\s+([\d.]+)x", out))
    assert set(ratios) == {"time ratio", "memory ratio", "FLOP ratio"} and all(float(v) > 0 for v in ratios.values())
    distinct = int(re.search(r"\((\d+) distinct of 16\)", out).group(1))
    assert 1 <= distinct <= 16 and float(ratios["FLOP ratio"]) == pytest.approx(4000 / distinct, rel=0.01)


@pytest.mark.distributed  # FSDP over a one-process gloo group
@pytest.mark.parametrize("cache", [[], ["--grad-cache", "1"]], ids=["plain", "grad-cache"])
def test_mfu_benchmark_code_path_runs_on_the_cpu(cache):
    """The GPU benchmark's path (FSDP per layer, activation checkpointing, bf16-mixed, all axes) on a toy model."""
    out = run(str(ROOT / "benchmarks/bench_mfu.py"), "--cpu-smoke", "--batch", "2", "--seq", "16", "--steps", "2",
              "--warmup", "1", *cache)
    assert "toy Qwen3, MEL r=32 + MLL (1, 2) + MRL, FSDP bf16-mixed" in out
    assert f"gradient caching {'1 texts per chunk' if cache else 'off'}" in out
    assert re.search(r"step [\d.]+ ms \(median of 2\), [\d,]+ tokens/s", out), out


def test_mfu_flop_count_matches_torchs_flop_counter_on_a_tiny_qwen3():
    """The MFU numerator: 6 N + 12 L (heads x head_dim) S per token, against the matmuls torch actually runs."""
    import importlib.util

    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, AutoModel

    spec = importlib.util.spec_from_file_location("bench_mfu", ROOT / "benchmarks/bench_mfu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # attention 4 x 32 = 128 wide on a 64-wide model, as Qwen3-0.6B's is twice its hidden size
    cfg = {**bench.TINY_QWEN3, "vocab_size": 1000, "hidden_size": 64, "head_dim": 32}
    config = AutoConfig.for_model(**cfg)
    config._attn_implementation = "eager"  # plain matmuls, which the counter sees
    model = AutoModel.from_config(config)
    batch, seq = 2, 48
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).last_hidden_state.sum().backward()
    expected = bench.flops_per_token(model, seq, cfg) * batch * seq
    # what the formula counts but the counter does not: the norm weights (no matmul); nothing else differs
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.01)


def test_gradcache_benchmark_prints_memory_and_time_ratios_with_equal_losses():
    out = run(str(ROOT / "benchmarks/bench_gradcache.py"), "--batch", "4", "--chunk", "2", "--max-len", "8",
              "--repeats", "1", "--threads", "1")
    for pairs in (4, 8):
        line = re.search(rf"batch {pairs}: cached / uncached peak memory ([\d.]+)x, step time ([\d.]+)x, "
                         r"\|loss difference\| ([\d.e+-]+)", out)
        assert line, out
        assert float(line.group(1)) > 0 and float(line.group(2)) > 0
        assert float(line.group(3)) < 1e-4  # the cached step computes the uncached loss
    assert re.search(r"doubling the batch: uncached peak memory [\d.]+x, cached [\d.]+x", out)


def test_shards_benchmark_prints_worker_ratios_at_a_toy_size():
    out = run(str(ROOT / "benchmarks/bench_shards.py"), "--rows", "400", "--shard-size", "50")
    assert "synthetic F2LLM-v2 release: 400 rows in 4 parquet files" in out
    runs = dict(re.findall(r"(1 worker|2 workers): .* process tree \((\d+) processes\)", out))
    assert int(runs["1 worker"]) == 1 and int(runs["2 workers"]) >= 3  # the writer and its 2 worker processes
    ratios = re.search(r"2 workers / 1 worker: records/s ([\d.]+)x; peak tree RSS ([\d.]+)x, PSS ([\d.]+)x", out)
    assert ratios, out
    assert all(float(v) > 0 for v in ratios.groups())


def test_e2e_benchmark_runs_both_pipelines_and_prints_ratios_at_a_toy_size():
    """Both trainers (mlembed's fit on shards, plain and with gradient caching; sentence-transformers' trainer)
    each in its own process."""
    arms = ["mlembed MRL+MLL", "sentence-transformers MRL+MLL", "mlembed MRL+MLL cached"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_e2e.py"), "--smoke", "--threads", "1",
                           "--arms", *arms], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for arm in arms:  # both counted samples and real tokens, and their process trees were sampled
        line = re.search(rf"  {re.escape(arm)} +([\d.]+) samples/s +([\d,]+) real tokens/s \(padding.*?"
                         r"peak tree RSS [\d,]+ MiB, PSS +([\d,]+) MiB", out)
        assert line and all(float(v.replace(",", "")) > 0 for v in line.groups()), out
    for ours in ("MRL\\+MLL", "MRL\\+MLL cached"):
        ratios = re.search(ours + r" +mlembed / sentence-transformers: samples/s ([\d.]+)x, real tokens/s ([\d.]+)x.*"
                           r"peak tree RSS ([\d.]+)x, PSS ([\d.]+)x", out)
        assert ratios and all(float(v) > 0 for v in ratios.groups()), out


def test_scaling_benchmark_writes_its_figure_and_table_at_a_toy_size(tmp_path):
    out = run(str(ROOT / "benchmarks/bench_scaling.py"), "--smoke", "--threads", "1", "--jobs", "2", "--out",
              str(tmp_path))
    table = (tmp_path / "bench_scaling.md").read_text()
    png = (tmp_path / "bench_scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    for axis in ("vocabulary size", "MRL dims", "MLL loss layers", "batch size"):
        assert f"| {axis} |" in table and axis in out
    for series in ("reference (full product)", "mlembed (gather-first)", "uncached", "gradient caching"):
        assert f"| {series} |" in table
    # every series gets a verdict from its own numbers: flat only within 15%
    verdicts = re.findall(r"\| (flat \([\d.]+x\)|grows [\d.]+x \(~x\^-?[\d.]+\))(?= \|)", table)
    assert len(verdicts) == 2 * 6, table


def test_loader_tokens_benchmark_prints_tokens_per_worker_and_the_time_split():
    out = run(str(ROOT / "benchmarks/bench_loader_tokens.py"), "--smoke")
    assert re.search(r"per worker: [\d,]+ real tokens/s = [\d.]+x the target of 50,000", out), out
    assert re.search(r"one GPU at 100,000 tokens/s needs [\d.]+ such workers", out), out
    shares = re.findall(r"^    (tar reading|JSON decoding|tokenization|padding|hashing|shuffling).*?([\d.]+)%$", out,
                        re.MULTILINE)
    assert len(shares) == 6 and sum(float(v) for _, v in shares) >= 99, out


def test_efficiency_benchmark_loads_the_export_without_mlembed_at_the_factor_arithmetic():
    out = run(str(ROOT / "benchmarks/bench_efficiency.py"), "--ranks", "64", "--texts", "8", "--repeats", "1")
    row = next(line for line in out.splitlines() if line.strip().startswith("64 |"))
    embedding_ratio, remote = float(row.split("|")[1].split()[-1]), float(row.split("|")[-1])
    assert 0.1 < embedding_ratio < 0.25  # 30,522 x 64 + 64 x 384 of 30,522 x 384
    assert abs(remote - 1.0) < 0.02  # what plain transformers holds is the factorised model, not the dense one


def test_serving_benchmark_holds_one_model_for_every_point_and_times_each():
    out = run(str(ROOT / "benchmarks/bench_serving.py"), "--texts", "8", "--repeats", "1")
    ratio = next(line for line in out.splitlines() if line.strip().startswith("one/sep."))
    parameters = float(ratio.split("|")[1])
    # One full-point model (factors at rank 384, 6 layers) against five models at the points' own ranks and depths:
    # exact parameter arithmetic, nothing timed.
    vocab, hidden, layer = 30522, 384, 1_774_464  # all-MiniLM-L6-v2: one transformer layer's parameters
    ranks, depths = (384, 128, 128, 64, 32), (6, 6, 4, 2, 2)
    factors = [vocab * k + k * hidden for k in ranks]
    rest = 512 * hidden + 2 * hidden + 2 * hidden + hidden * hidden + hidden  # positions, token types, norm, pooler
    one = factors[0] + rest + 6 * layer
    separate = sum(f + rest + d * layer for f, d in zip(factors, depths, strict=True))
    assert parameters == pytest.approx(one / separate, abs=6e-4)  # printed to 3 decimals
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+\s+\d+\s+\d+ \|", line)]
    assert [tuple(map(int, row.split("|")[0].split())) for row in rows] == [
        (384, 6, 384), (128, 6, 384), (128, 4, 128), (64, 2, 64), (32, 2, 64)]
    assert float(rows[0].split("|")[2]) == 1.0  # the full point against itself


def test_mining_benchmark_runs_both_miners_on_the_same_text_and_they_agree():
    out = run(str(ROOT / "benchmarks/bench_mine.py"), "--sizes", "200")
    row = next(line for line in out.splitlines() if line.strip().startswith("200 |"))
    overlap, reused = float(row.split("|")[-2]), float(row.split("|")[-1])
    assert overlap > 0.9  # the same model, settings and text: mostly the same negatives (ties and windows aside)
    assert 0.5 < reused <= 1.0  # the chained pairs: most queries are another pair's positive
    line = run(str(ROOT / "benchmarks/bench_mine.py"), "--sizes", "200", "--padding-only").strip()
    real, by_chars, by_tokens = (int(v.replace(",", "")) for v in re.findall(r"[\d,]{3,}", line.split(":", 1)[1]))
    assert real <= by_tokens <= by_chars  # batches of one token length pad the least


def test_cheap_point_mining_benchmark_reports_time_rescoring_and_overlap(tmp_path):
    from tests.test_export import fit_checkpoint

    _, checkpoint = fit_checkpoint("bert", tmp_path)  # a tiny 3D-ML model
    out = run(str(ROOT / "benchmarks/bench_mine_point.py"), "--model", str(checkpoint), "--point", "16,1,16",
              "--pairs", "120")
    rows = {line.split("|")[0].strip(): [float(v) for v in line.split("|")[1:]] for line in out.splitlines()
            if line.strip().startswith(("full |", "cheap |", "cheap + rescore |"))}
    assert set(rows) == {"full", "cheap", "cheap + rescore"}
    assert rows["full"][1] == 1.0 and rows["full"][3] == 1.0  # the reference against itself
    assert rows["full"][2] == rows["cheap"][2] == 0.0 < rows["cheap + rescore"][2] <= 1.0  # only it rescored


def test_demo_mining_arms_differ_only_in_the_dialogue_negatives(workdir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_demo_mining as bench

    data = workdir / "data" / "demo"
    rows = bench.stage2_records(data)
    dialogue = [r for r in rows if r["source"] == "dialogue-arabic"][:80]
    others = [r for r in rows if not r["source"].startswith("dialogue-")][:30]
    mined, seconds = bench.mine_dialogues(dialogue, tmp_path)  # the real command, on 80 records
    assert set(mined) == {r["id"] for r in dialogue} and seconds > 0
    arms = {name: bench.write_arm(dialogue + others, negatives, tmp_path / "arms" / name)
            for name, negatives in (("length", {}), ("mined", mined))}
    read = {name: {r["id"]: r for r in bench.stage2_records_of(path)} for name, path in arms.items()}
    assert read["length"] == {r["id"]: {k: r[k] for k in bench.RECORD_FIELDS} for r in dialogue + others}
    for rid, row in read["mined"].items():
        expected = mined.get(rid, read["length"][rid]["negatives"])
        assert row == {**read["length"][rid], "negatives": expected}
    passages = {r["positive"] for r in dialogue}
    assert all(set(negatives) <= passages for negatives in mined.values())  # mined among the source's replies
    config = yaml.safe_load(bench.arm_config(arms["mined"], tmp_path / "run", data).read_text())
    assert config["data"]["init_args"]["stage2"]["shards"] == [str(arms["mined"])]
    grid = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("GridEvaluation"))
    assert grid["init_args"]["baseline"] is False and grid["init_args"]["control"] is False
    demo = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    assert config["model"] == demo["model"] and config["data"]["init_args"]["stage1"] == {
        **demo["data"]["init_args"]["stage1"], "shards": [str(data / "stage1" / "train")]}
