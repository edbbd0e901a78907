"""Efficiency-mode vs compat-mode export of all-MiniLM-L6-v2 (SVD-initialised MEL) at several ranks.

For each rank k both exports are written and loaded back with ``mlembed.load``; the script prints, as ratios
efficiency / compat measured in this one run: the token-embedding parameter bytes, the on-disk bytes (the
whole directory and the weights file alone) and the encode time (median of interleaved repeats, one thread).
The last column loads the efficiency export as a user without mlembed does (``AutoModel.from_pretrained(DIR,
trust_remote_code=True)`` in a fresh interpreter where importing mlembed is blocked) and divides its parameter
bytes by the factor arithmetic: the compat model's bytes with the vocab x hidden matrix replaced by
vocab x k + k x hidden.

    python benchmarks/bench_efficiency.py [--ranks 64 128 256 384] [--texts 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import minilm_dir

from mlembed.axes.mel import MEL
from mlembed.backbone import BackboneConfig
from mlembed.export import FACTORIZED_WEIGHTS, directory_bytes, export
from mlembed.loading import Embedder, load
from mlembed.module import EmbeddingModule


def texts(count: int) -> list[str]:
    """Real English sentences (gensim's Lee corpus), cycled to ``count``."""
    from gensim.test.utils import datapath

    lines = [line.strip() for line in Path(datapath("lee.cor")).read_text(errors="replace").splitlines() if line.strip()]
    sentences = [s.strip() + "." for line in lines for s in line.split(". ") if len(s.split()) > 3]
    return [sentences[i % len(sentences)] for i in range(count)]


def embedding_bytes(encoder: Embedder) -> int:
    """Bytes of the token-embedding parameters (the dense matrix, or the two factors)."""
    embedding = encoder.encoder.backbone.model.get_input_embeddings()
    return sum(p.numel() * p.element_size() for p in embedding.parameters())


REMOTE_LOAD = r"""
import importlib.abc, json, sys

class NoMlembed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "mlembed":
            raise ImportError(name)

sys.meta_path.insert(0, NoMlembed())
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps(sum(p.numel() * p.element_size() for p in model.parameters())))
"""


def remote_parameter_bytes(directory: Path) -> int:
    """Parameter bytes of the export as plain transformers loads it, in a fresh interpreter without mlembed."""
    done = subprocess.run([sys.executable, "-c", REMOTE_LOAD, str(directory)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=True, cwd=directory.parent)
    return int(done.stdout.strip().splitlines()[-1])


def parameter_bytes(encoder: Embedder) -> int:
    return sum(p.numel() * p.element_size() for p in encoder.encoder.backbone.model.parameters())


def encode_seconds(encoders: dict[str, Embedder], batch: list[str], repeats: int) -> dict[str, float]:
    """Median encode time of each encoder; runs are interleaved so drifting machine load hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for encoder in encoders.values():
        encoder.encode(batch[:32])  # warm-up
    for _ in range(repeats):
        for name, encoder in encoders.items():
            start = time.perf_counter()
            encoder.encode(batch, batch_size=64)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[64, 128, 256, 384])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread gives steadier ratios

    module = EmbeddingModule(
        BackboneConfig(pretrained=minilm_dir(), max_seq_length=128),
        mel=MEL(rank=max(args.ranks), ranks=sorted(args.ranks)),
    )
    module.configure_model()
    module.init_mel_from_svd()
    batch = texts(args.texts)
    print(f"all-MiniLM-L6-v2, vocab {module.encoder.backbone.vocab_size}, hidden {module.encoder.backbone.hidden_size}; "
          f"{len(batch)} texts, max_seq_length 128, median of {args.repeats}, 1 thread\n")
    header = (f"{'rank':>5} | {'emb MiB c/e':>13} {'ratio':>6} | {'dir MiB c/e':>13} {'ratio':>6} | "
              f"{'weights ratio':>13} | {'encode s c/e':>13} {'ratio':>6} | {'max |diff|':>10} | "
              f"{'no-mlembed load / arithmetic':>29}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for rank in args.ranks:
            compat = export(module, Path(tmp) / f"compat-{rank}", mode="compat", rank=rank)
            efficiency = export(module, Path(tmp) / f"efficiency-{rank}", mode="efficiency", rank=rank)
            encoders = {"compat": load(compat), "efficiency": load(efficiency)}
            emb = {name: embedding_bytes(e) for name, e in encoders.items()}
            disk = {"compat": directory_bytes(compat), "efficiency": directory_bytes(efficiency)}
            weights = (efficiency / FACTORIZED_WEIGHTS).stat().st_size / (compat / "model.safetensors").stat().st_size
            seconds = encode_seconds(encoders, batch, args.repeats)
            diff = (encoders["compat"].encode(batch[:64]) - encoders["efficiency"].encode(batch[:64])).abs().max()
            vocab, hidden = module.encoder.backbone.vocab_size, module.encoder.backbone.hidden_size
            arithmetic = parameter_bytes(encoders["compat"]) + (vocab * rank + rank * hidden - vocab * hidden) * 4
            remote = remote_parameter_bytes(efficiency) / arithmetic
            mib = 2**20
            print(f"{rank:>5} | {emb['compat'] / mib:>6.1f}/{emb['efficiency'] / mib:<6.1f} "
                  f"{emb['efficiency'] / emb['compat']:>6.3f} | {disk['compat'] / mib:>6.1f}/"
                  f"{disk['efficiency'] / mib:<6.1f} {disk['efficiency'] / disk['compat']:>6.3f} | "
                  f"{weights:>13.3f} | {seconds['compat']:>6.2f}/{seconds['efficiency']:<6.2f} "
                  f"{seconds['efficiency'] / seconds['compat']:>6.3f} | {diff.item():>10.2e} | {remote:>29.4f}")


if __name__ == "__main__":
    main()
