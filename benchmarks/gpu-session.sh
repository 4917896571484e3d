#!/usr/bin/env bash
# The GPU figures of results/benchmarks/gpu-<device>.md and .json, in parts that each fit one call
# to a GPU machine (10 minutes at most); run them back to back on the still-warm machine:
#   train   `smol train` of SmolLM2-135M at 2048 context, compiled, 32x2048 per step, as is and with
#           train.fused_loss + train.fused_projections: tokens/s, MFU and causal MFU as the training
#           loop reports them (perf.jsonl); then benchmarks/gpu.py: matmul peak, SDPA backends, the
#           training rows (ours eager / compiled / fused loss / fused projections / FP8 lm_head vs
#           transformers, 16x2048) and a profile of our compiled step.   (estimate on an H100: 9-10
#           minutes; FUSED_TRAIN=0 skips the second smol train, about 1.5 minutes)
#   decode  decode at batch 1 on the weights `train` left (random init if the machine is fresh):
#           transformers, ours eager / CUDA graph / compiled / fused projections, the token picked
#           on the host (before) and in the graph (now), kernels per token; `smol generate`.
#                                                           (estimate: 2-3 minutes)
#   small   the default ablation's 15 small runs one at a time vs 5 packed onto the GPU; with
#           SMALL_LADDER=1 also benchmarks/ladder-10m.yaml (6 runs of 10M parameters) vs 6 packed.
#                                                           (estimate: 3-4 minutes, +3 with the ladder)
# Each part writes OUT_DIR/gpu-<part>.md and .json (train also smol train's perf.jsonl files);
# OUT_DIR/gpu.json merges what is there. gpu.py rewrites its files after each section, so a call
# cut off at its limit still brings back every section that finished.
# In 15 minutes of device time, the machine's start included: `FUSED_TRAIN=0 ... train` first
# (about 8 minutes), then `... decode small` at once on the warm machine, with what is left.
# Measured so far (results/benchmarks/gpu-h100.md): the train and decode steps of an earlier
# version took 7.3 minutes on an H100 together. `smol eval` against lm-eval on CUDA is
# gpu-eval.sh; the real ladder end to end at 135M is gpu-ablation.sh.
# Usage, from the project root:  bash ../shared/gpu/bundle.sh (here, once), then on the GPU machine
#   bash benchmarks/gpu-session.sh OUT_DIR [PART ...]   (default: train decode small; OUT_DIR
#   default: $OUT, else /tmp/smollm-gpu). Files of several calls merge here with
#   python benchmarks/gpu.py --merge A/gpu-train.json A/train-perf.jsonl A/train-perf-fused.jsonl \
#     B/gpu-decode.json B/gpu-small.json --json results/benchmarks/gpu-<device>.json
set -uo pipefail
out=${1:-${OUT:-/tmp/smollm-gpu}}
shift || true
parts=${*:-train decode small}
mkdir -p "$out"
# shellcheck disable=SC1091
source .gpu/setup.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,driver_version --format=csv | tee "$out/nvidia-smi.txt"
run=runs/gpu-full-135m
bench() { python3 benchmarks/gpu.py "$@" 2>&1 | grep -v "Loading weights"; }

for part in $parts; do
  case $part in
  train)
    variants=("")
    [ "${FUSED_TRAIN:-1}" = 1 ] && variants+=("train.fused_loss=true train.fused_projections=true")
    for flags in "${variants[@]}"; do
      dir=$run${flags:+-fused}
      echo "== smol train (full 135M, 2048, compiled, 32x2048) $flags"
      rm -rf "$dir"
      # shellcheck disable=SC2086
      time python3 -m smollm.cli train model.preset=full data.seq_len=2048 data.tokenizer=.gpu/tok \
        train.batch_size=32 train.micro_batch_size=32 train.max_steps=50 train.warmup_steps=10 \
        train.compile=true train.dtype=bf16 train.log_every=10 train.eval_every=50 train.ckpt_every=50 \
        train.eval_blocks=16 tracking.mode=disabled $flags --run-dir "$dir" --quiet 2>&1 | tail -20
      cp "$dir/perf.jsonl" "$out/train-perf${flags:+-fused}.jsonl" 2>/dev/null && cat "$dir/perf.jsonl"
      tail -2 "$dir/metrics.jsonl" 2>/dev/null
    done
    echo "== benchmarks/gpu.py (training rows at 16x2048, attention, profile)"
    time bench --only attention,train --profile --out "$out/gpu-train.md" --json "$out/gpu-train.json"
    ;;
  decode)
    echo "== decode"
    model=()
    [ -d "$run" ] && model=(--model "$run")
    ids=$(python3 -c "from transformers import AutoTokenizer; t=AutoTokenizer.from_pretrained('.gpu/tok'); print(','.join(map(str, t('Once upon a time').input_ids)))")
    time bench --only decode "${model[@]}" --prompt-ids "$ids" --out "$out/gpu-decode.md" --json "$out/gpu-decode.json"
    [ -d "$run" ] && python3 -m smollm.cli generate "Once upon a time" --model "$run" --max-new-tokens 48 --temperature 0 2>&1 | tail -3
    ;;
  small)
    echo "== small models: one run at a time vs packed onto the GPU"
    ladder=()
    [ "${SMALL_LADDER:-0}" = 1 ] && ladder=(--small-ladder benchmarks/ladder-10m.yaml --small-ladder-overrides data.tokenizer=.gpu/tok)
    time bench --only small --small default --small-workers 5 "${ladder[@]}" --out "$out/gpu-small.md" --json "$out/gpu-small.json" | tail -16
    ;;
  *) echo "unknown part $part: train, decode or small"; exit 2 ;;
  esac
done
# the headline figures of every part here (and what smol train itself reported) as gpu.json
existing=()
for f in "$out"/gpu-train.json "$out"/gpu-decode.json "$out"/gpu-small.json "$out"/train-perf.jsonl "$out"/train-perf-fused.jsonl; do
  [ -f "$f" ] && existing+=("$f")
done
[ ${#existing[@]} -gt 0 ] && python3 benchmarks/gpu.py --merge "${existing[@]}" --json "$out/gpu.json"
