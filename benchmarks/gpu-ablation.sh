#!/usr/bin/env bash
# The real ladder end to end on one GPU: `smol run ablation smollm2-135m-smoke` (v1, v2, full at
# 135M / 2048, compiled, bf16, 40 steps each, downstream tasks during training, W&B offline files,
# the tables), with the wall time of each run. About 3 minutes expected on an H100 (not yet run).
# Needs .gpu/ (../shared/gpu/bundle.sh wandb) with .gpu/eval/data (benchmarks/gpu-eval-bundle.sh)
# and .gpu/tok. Results go to OUT_DIR/results/smollm2-135m-smoke/ (commit them under results/).
# Usage, on the GPU machine from the project root:  bash benchmarks/gpu-ablation.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/smollm-gpu}}
mkdir -p "$out"
# shellcheck disable=SC1091
source .gpu/setup.sh
export SMOLLM_EVAL_DATA=.gpu/eval/data WANDB_MODE=offline
rm -rf runs/smollm2-135m-smoke
time python3 -m smollm.cli run ablation smollm2-135m-smoke data.tokenizer=.gpu/tok --quiet \
  --results-dir "$out/results" 2>&1 | tail -12
for r in runs/smollm2-135m-smoke/*-s0; do
  python3 - "$r" <<'PY'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
s = json.loads((run / "summary.json").read_text())
perf = [json.loads(line) for line in (run / "perf.jsonl").read_text().splitlines()]
print(run.name, s["status"], f"val_bpb {s.get('val_bpb')}", f"tokens/s {s.get('tokens_per_s')}",
      f"mfu {perf[-1].get('mfu')} causal {perf[-1].get('mfu_causal')}", "eval:", sorted(s.get("eval") or {}))
PY
done
cp runs/smollm2-135m-smoke/provenance.json "$out/" 2>/dev/null
ls runs/smollm2-135m-smoke/*/wandb 2>/dev/null | head -3
