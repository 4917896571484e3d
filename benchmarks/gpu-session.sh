#!/usr/bin/env bash
# The GPU training and decode figures in one call to a GPU machine (about 7 minutes on an H100/H200):
#   1. `smol train` of SmolLM2-135M at 2048 context, compiled, 32x2048 per step: tokens/s and MFU
#      as the training loop itself reports them (perf.jsonl);
#   2. benchmarks/gpu.py: matmul peak, SDPA backends, training rows vs transformers (eager and
#      compiled, 16x2048) and a profile of our compiled step;
#   3. decode on the weights trained in 1 (gpu.py --only decode) and `smol generate` there, with
#      kernels per token;
#   4. the default ablation's 15 small runs one at a time vs packed 5 at once (gpu.py --only small);
#   then the headline figures of 2-4 merged into OUT_DIR/gpu.json (for results/benchmarks/gpu-<device>.json).
# On an H100 steps 1-3 took 7.3 minutes (results/benchmarks/gpu-h100.md); 4 is not yet measured
# (estimate: 2-4 minutes). `smol eval` against lm-eval on
# CUDA is a second call on the still-warm machine, on the weights trained here: gpu-eval.sh.
# Usage, from the project root:  bash ../shared/gpu/bundle.sh (here, once), then on the GPU machine
#   bash benchmarks/gpu-session.sh OUT_DIR      (OUT_DIR default: $OUT, else /tmp/smollm-gpu)
set -uo pipefail
out=${1:-${OUT:-/tmp/smollm-gpu}}
mkdir -p "$out"
# shellcheck disable=SC1091
source .gpu/setup.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,driver_version --format=csv | tee "$out/nvidia-smi.txt"
run=runs/gpu-full-135m
rm -rf "$run"
echo "== smol train (full 135M, 2048, compiled, 32x2048)"
time python3 -m smollm.cli train model.preset=full data.seq_len=2048 data.tokenizer=.gpu/tok \
  train.batch_size=32 train.micro_batch_size=32 train.max_steps=50 train.warmup_steps=10 \
  train.compile=true train.dtype=bf16 train.log_every=10 train.eval_every=50 train.ckpt_every=50 \
  train.eval_blocks=16 tracking.mode=disabled --run-dir "$run" --quiet 2>&1 | tail -20
cp "$run/perf.jsonl" "$out/train-perf.jsonl" 2>/dev/null && cat "$run/perf.jsonl"
tail -2 "$run/metrics.jsonl" 2>/dev/null
echo "== benchmarks/gpu.py (training rows at 16x2048, attention, profile)"
time python3 benchmarks/gpu.py --only attention,train --profile --out "$out/gpu-train.md" --json "$out/gpu-train.json" 2>&1 | grep -v "Loading weights"
echo "== decode on the trained weights"
ids=$(python3 -c "from transformers import AutoTokenizer; t=AutoTokenizer.from_pretrained('.gpu/tok'); print(','.join(map(str, t('Once upon a time').input_ids)))")
time python3 benchmarks/gpu.py --only decode --model "$run" --prompt-ids "$ids" --out "$out/gpu-decode.md" --json "$out/gpu-decode.json" 2>&1 | grep -v "Loading weights"
python3 -m smollm.cli generate "Once upon a time" --model "$run" --max-new-tokens 48 --temperature 0 2>&1 | tail -3
echo "== small models: the default ablation (15 runs at its CPU shape) one at a time vs packed"
time python3 benchmarks/gpu.py --only small --small default --small-workers 5 --out "$out/gpu-small.md" --json "$out/gpu-small.json" 2>&1 | tail -8
# the headline figures of the three calls as one gpu-<device>.json (results/benchmarks/)
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
parts = [json.loads((out / f"gpu-{n}.json").read_text()) for n in ("train", "decode", "small") if (out / f"gpu-{n}.json").is_file()]
merged = {k: v for p in parts for k, v in p.items() if v is not None or k not in {k2 for q in parts for k2, v2 in q.items() if v2 is not None}}
(out / "gpu.json").write_text(json.dumps(merged, indent=2) + "\n")
print(json.dumps(merged, indent=2))
PY
