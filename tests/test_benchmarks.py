"""benchmarks/gpu.py's merge of several GPU calls into one gpu-<device>.json (no GPU needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_merge_keeps_measured_figures_and_reads_smol_trains_perf_files(tmp_path):
    """A figure one call measured beats another call's null; a `smol train` perf.jsonl adds its
    median tokens/s, MFU and causal MFU without the first (compiling) window; the output's folder
    is made if it is missing, so a long GPU run never loses its figures at the very end."""
    train = {"device": "NVIDIA H100", "train_tokens_per_s": 3.0e5, "decode_tokens_per_s": None}
    decode = {"device": "NVIDIA H100", "train_tokens_per_s": None, "decode_tokens_per_s": 1600.0}
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "gpu-train.json").write_text(json.dumps(train))
    (tmp_path / "A" / "gpu-decode.json").write_text(json.dumps(decode))
    perf = [  # the first window compiles: left out of the medians
        {"step": 10, "tokens_per_s": 1.0, "mfu": 0.01, "mfu_causal": 0.011},
        {"step": 20, "tokens_per_s": 300.0, "mfu": 0.40, "mfu_causal": 0.44},
        {"step": 30, "tokens_per_s": 320.0, "mfu": 0.42, "mfu_causal": 0.46},
        {"step": 40, "tokens_per_s": 310.0, "mfu": 0.41, "mfu_causal": 0.45},
    ]
    (tmp_path / "A" / "train-perf-fused.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in perf)
    )
    out = tmp_path / "results" / "benchmarks" / "gpu-h100.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--merge",
         "A/gpu-train.json", "A/gpu-decode.json", "A/train-perf-fused.jsonl", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.loads(out.read_text())
    assert merged == json.loads(proc.stdout)
    assert merged["train_tokens_per_s"] == 3.0e5 and merged["decode_tokens_per_s"] == 1600.0
    assert merged["smol_train_fused_tokens_per_s"] == 310.0
    assert merged["smol_train_fused_mfu"] == 0.41 and merged["smol_train_fused_mfu_causal"] == 0.45
