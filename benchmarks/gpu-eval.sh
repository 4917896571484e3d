#!/usr/bin/env bash
# `smol eval`'s scoring against lm-evaluation-harness on CUDA (benchmarks/evals.py, bf16, 200 items
# of each task, best of 2 turns, every turn's time printed): about 2 minutes on an H100, plus the
# GPU-only tests of the eval and decode paths. Needs .gpu/ (../shared/gpu/bundle.sh) with
# .gpu/eval/ (benchmarks/gpu-eval-bundle.sh: lm-eval's wheels and the tasks' arrow files).
# The model must use the SmolLM2 tokenizer: by default the run gpu-session.sh trained (call this
# right after it on the same machine); without it, a short run (30 steps, eager) trains one first,
# about a minute. BEFORE=DIR also measures an older copy of the package, DIR/smollm, in the same
# call (e.g. `mkdir -p .gpu/before && git archive REV smollm | tar -x -C .gpu/before`).
# Usage, on the GPU machine from the project root:  [BEFORE=DIR] bash benchmarks/gpu-eval.sh [OUT_DIR] [MODEL]
set -uo pipefail
out=${1:-${OUT:-/tmp/smollm-gpu}}
mkdir -p "$out"
[ -d .gpu/eval/whl ] || { echo "no .gpu/eval/: run benchmarks/gpu-eval-bundle.sh first (here)"; exit 1; }
# shellcheck disable=SC1091
source .gpu/setup.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu/eval/whl/*.whl
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv | tee "$out/nvidia-smi.txt"
model=${2:-runs/gpu-full-135m}
if [ -z "${2:-}" ] && [ ! -e "$model" ]; then
  model=runs/gpu-eval-135m
  echo "== no gpu-session.sh run here: a short one, $model"
  rm -rf "$model"
  time python3 -m smollm.cli train model.preset=full data.seq_len=1024 data.tokenizer=.gpu/tok \
    train.batch_size=16 train.micro_batch_size=16 train.max_steps=30 train.warmup_steps=5 \
    train.compile=false train.dtype=bf16 train.log_every=10 train.eval_every=30 train.ckpt_every=30 \
    train.eval_blocks=8 tracking.mode=disabled --run-dir "$model" --quiet 2>&1 | tail -5
fi
[ -e "$model" ] || { echo "no $model: run benchmarks/gpu-session.sh first, or name a model"; exit 1; }
echo "== GPU-only tests"
SMOLLM_TEST_TOKENIZER=.gpu/tok SMOLLM_EVAL_DATA=.gpu/eval/data timeout 240 \
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_evals.py tests/test_decode.py 2>&1 | tail -5
bench() {  # NAME [extra PYTHONPATH first]
  echo "== benchmarks/evals.py: $1"
  PYTHONPATH="${2:+$2:}$PYTHONPATH" python3 benchmarks/evals.py --model "$model" \
    --data-dir .gpu/eval/data --device cuda --dtype bf16 --limit 200 --repeat 2 --batch 16 \
    --out "$out/$1.md" 2>&1 | grep -v -E "Loading weights|it/s\]"
}
time bench gpu-eval
if [ -n "${BEFORE:-}" ]; then
  [ -d "$BEFORE/smollm" ] || { echo "BEFORE=$BEFORE has no smollm/"; exit 1; }
  time bench gpu-eval-before "$BEFORE"
fi
