#!/usr/bin/env bash
# `smol eval`'s scoring against lm-evaluation-harness on CUDA (benchmarks/evals.py, bf16, 200 items
# of each task, best of 2 turns): about 2 minutes on an H100. Needs .gpu/ (../shared/gpu/bundle.sh)
# with .gpu/eval/ (benchmarks/gpu-eval-bundle.sh: lm-eval's wheels and the tasks' arrow files), and
# a model whose tokenizer is the SmolLM2 one: by default the run gpu-session.sh trained, so call it
# on the same machine right after gpu-session.sh.
# Usage, on the GPU machine from the project root:  bash benchmarks/gpu-eval.sh [OUT_DIR] [MODEL]
set -uo pipefail
out=${1:-${OUT:-/tmp/smollm-gpu}}
model=${2:-runs/gpu-full-135m}
mkdir -p "$out"
[ -d .gpu/eval/whl ] || { echo "no .gpu/eval/: run benchmarks/gpu-eval-bundle.sh first (here)"; exit 1; }
[ -e "$model" ] || { echo "no $model: run benchmarks/gpu-session.sh first, or name a model"; exit 1; }
# shellcheck disable=SC1091
source .gpu/setup.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu/eval/whl/*.whl
time python3 benchmarks/evals.py --model "$model" --data-dir .gpu/eval/data --device cuda --dtype bf16 \
  --limit 200 --repeat 2 --batch 16 --out "$out/gpu-eval.md" 2>&1 | grep -v -E "Loading weights|it/s\]"
