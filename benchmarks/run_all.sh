#!/usr/bin/env bash
# Run every CPU benchmark one after the other (nothing else should load the machine meanwhile) and keep each
# script's printed output in benchmarks/results/<name>.txt, the source of the README's performance numbers.
#   bash benchmarks/run_all.sh            # from the repository root; about 30 minutes on 2 cores
# (bench_scaling also writes benchmarks/results/bench_scaling.png and .md, the README's figure and table)
# bench_mfu.py needs a CUDA GPU and is run separately where one is available.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
python -c "from mlembed.data.demo import build_demo; build_demo('data/demo')"
for bench in bench_mel bench_axes bench_vs_sentence_transformers bench_efficiency bench_gradcache bench_loader bench_eval_grid \
    bench_e2e bench_scaling bench_loader_tokens bench_shards; do
  args=()
  if [ "$bench" = bench_eval_grid ]; then args=(--data-dir data/demo); fi
  echo "== python benchmarks/$bench.py ${args[*]:-}"
  { echo "\$ python benchmarks/$bench.py ${args[*]:-}"; echo "# $(date -u +%F) $(nproc) cores, torch $(python -c 'import torch; print(torch.__version__)')";
    python "benchmarks/$bench.py" "${args[@]}"; } 2>&1 | grep -v -i "warn" | tee "benchmarks/results/$bench.txt"
done
