"""One loaded model serving every point against one export per point (all-MiniLM-L6-v2, SVD-initialised MEL).

A 3D-ML model is many models in one set of weights. This script exports all-MiniLM-L6-v2 (MEL factors from the
SVD of its embedding; ranks 32/64/128/384, depths 2/4/6, dims 64/128/384 declared as trained) twice over:

- ``one``: a single efficiency export at the full point, loaded once, serving each point per ``encode`` call;
- ``separate``: one efficiency export per point (its rank, depth and width), each loaded on its own, as a user
  who deploys every point as its own model would.

Side by side, in this one run:

1. memory: each arm runs in a fresh process (``--memory-worker``) that loads its model(s) and encodes the texts at
   every point; printed are the parameter bytes held and the peak RSS above the process's RSS after imports
   (VmHWM), and the ratios one / separate;
2. throughput: texts per second at each point of the one loaded model (medians of interleaved repeats, one
   thread), relative to the full point, beside the share of the layers the point runs (depth 2 of 6 should cost
   about a third: the embedding lookup and the pooling are a small part).

    python benchmarks/bench_serving.py [--texts 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from common import in_subprocesses, interleaved_medians, kib, minilm_dir

from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig
from mlembed.export import export
from mlembed.loading import Embedder, load
from mlembed.module import EmbeddingModule

#: The five (rank, depth, dim) points served, the full one first.
POINTS = ((384, 6, 384), (128, 6, 384), (128, 4, 128), (64, 2, 64), (32, 2, 64))
ARMS = ("one", "separate")


def texts(count: int) -> list[str]:
    """Real English sentences (gensim's Lee corpus), cycled to ``count``."""
    from gensim.test.utils import datapath

    lines = [line.strip() for line in Path(datapath("lee.cor")).read_text(errors="replace").splitlines() if line.strip()]
    sentences = [s.strip() + "." for line in lines for s in line.split(". ") if len(s.split()) > 3]
    return [sentences[i % len(sentences)] for i in range(count)]


def write_exports(root: Path) -> None:
    """The full-point efficiency export (``root/one``) and one efficiency export per point (``root/separate-i``)."""
    module = EmbeddingModule(
        BackboneConfig(pretrained=minilm_dir(), max_seq_length=128),
        mel=MEL(rank=384, ranks=sorted({p[0] for p in POINTS})),
        mll=MLL(layers=sorted({p[1] for p in POINTS})),
        mrl=MRL(dims=sorted({p[2] for p in POINTS})),
    )
    module.configure_model()
    module.init_mel_from_svd()
    export(module, root / "one", mode="efficiency")
    for i, (rank, depth, dim) in enumerate(POINTS):
        export(module, root / f"separate-{i}", mode="efficiency", rank=rank, depth=depth, dim=dim)


def parameter_bytes(model: Embedder) -> int:
    return sum(p.numel() * p.element_size() for p in model.encoder.parameters())


def memory_worker(arm: str, root: Path, batch: list[str]) -> dict:
    """Load the arm's model(s), encode ``batch`` at every point; parameter bytes and peak RSS above the start."""
    torch.set_num_threads(1)
    start = kib("VmRSS")
    if arm == "one":
        model = load(root / "one")
        held = parameter_bytes(model)
        for rank, depth, dim in POINTS:
            model.encode(batch, rank=rank, depth=depth, dim=dim)
    else:
        models = [load(root / f"separate-{i}") for i in range(len(POINTS))]
        held = sum(parameter_bytes(model) for model in models)
        for model in models:
            model.encode(batch)
    return {"parameters": held, "peak": kib("VmHWM") - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256, help="texts encoded at each point")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--exports", help=argparse.SUPPRESS)  # set for the memory workers
    parser.add_argument("--memory-worker", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = texts(args.texts)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, Path(args.exports), batch)))
        return
    torch.set_num_threads(1)  # a shared 2-core machine: one thread gives steadier ratios
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_exports(root)
        memory = in_subprocesses(sys.argv[0], ARMS, ["--texts", str(args.texts), "--exports", str(root)])
        model = load(root / "one")
        seconds = interleaved_medians(
            {point: (lambda p=point: model.encode(batch, rank=p[0], depth=p[1], dim=p[2])) for point in POINTS},
            args.repeats)
    mib = 2**20
    print(f"all-MiniLM-L6-v2 (MEL from the SVD), {len(POINTS)} points; {len(batch)} texts, max_seq_length 128, "
          f"1 thread\n")
    print("1. memory: one loaded model serving every point vs one export per point (fresh processes)\n")
    print(f"{'':>10} | {'parameters MiB':>14} | {'peak RSS above start MiB':>24}")
    for arm in ARMS:
        print(f"{arm:>10} | {memory[arm]['parameters'] / mib:>14.1f} | {memory[arm]['peak'] / mib:>24.1f}")
    print(f"{'one/sep.':>10} | {memory['one']['parameters'] / memory['separate']['parameters']:>14.3f} | "
          f"{memory['one']['peak'] / memory['separate']['peak']:>24.3f}\n")
    print(f"2. throughput of the one loaded model at each point (median of {args.repeats})\n")
    full = seconds[POINTS[0]]
    print(f"{'rank':>5} {'depth':>5} {'dim':>5} | {'texts/s':>8} | {'relative to full':>16} | {'layers run':>10}")
    for point in POINTS:
        rate = len(batch) / seconds[point]
        print(f"{point[0]:>5} {point[1]:>5} {point[2]:>5} | {rate:>8.1f} | {full / seconds[point]:>16.2f} | "
              f"{point[1] / POINTS[0][1]:>10.2f}")


if __name__ == "__main__":
    main()
