"""Decode speed: smollm vs transformers `generate` on the real SmolLM2-135M weights, side by side.

    python benchmarks/generate.py [--new-tokens 128] [--repeats 3] [--dtypes fp32,bf16]

Batch 1, greedy, the same prompt and token count for both, measured alternately in one process.
Also prints the memory-bandwidth ceiling: weight bytes / measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from smollm import load_pretrained, load_tokenizer
from smollm.assets import packaged_gguf

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def copy_bandwidth(n_bytes: int = 512 << 20, repeats: int = 10) -> float:
    """Bytes copied per second by one large tensor copy (memcpy convention: size / time)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return n_bytes / best


def time_pair(ours, ref, repeats: int) -> tuple[float, float]:
    """Median seconds of each, with the repeats interleaved so drift hits both alike."""
    ours()
    ref()  # warm-up (allocator, MKL/oneDNN kernels)
    t_ours, t_ref = [], []
    for _ in range(repeats):
        for fn, times in ((ours, t_ours), (ref, t_ref)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(t_ours), statistics.median(t_ref)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--prompt", default="Once upon a time")
    args = p.parse_args()

    from transformers import AutoModelForCausalLM

    gguf = packaged_gguf()
    ids = load_tokenizer()(args.prompt, return_tensors="pt").input_ids
    n = args.new_tokens
    bw = copy_bandwidth()
    print(
        f"CPU threads: {torch.get_num_threads()}  copy bandwidth: {bw / 1e9:.1f} GB/s  prompt: {ids.shape[1]} tokens, {n} new, batch 1, greedy"
    )
    print(
        f"{'dtype':<6}{'smollm tok/s':>14}{'transformers tok/s':>20}{'ratio':>8}{'ceiling tok/s':>15}{'% of ceiling':>14}"
    )
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        ours = load_pretrained(str(gguf), dtype=dtype)
        ref = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=dtype
        ).eval()
        out_ours = ours.generate(ids, max_new_tokens=n)
        with torch.inference_mode():
            out_ref = ref.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None
            )
        same = "same tokens" if torch.equal(out_ours, out_ref) else "tokens differ"
        with torch.inference_mode():
            t_ours, t_ref = time_pair(
                lambda ours=ours: ours.generate(ids, max_new_tokens=n),
                lambda ref=ref: ref.generate(
                    ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None
                ),
                args.repeats,
            )
        weight_bytes = ours.num_parameters() * ours.lm_head.weight.element_size()
        ceiling = bw / weight_bytes
        print(
            f"{name:<6}{n / t_ours:>14.1f}{n / t_ref:>20.1f}{t_ref / t_ours:>7.2f}x{ceiling:>15.1f}{100 * n / t_ours / ceiling:>13.0f}%  ({same})"
        )
        del ours, ref


if __name__ == "__main__":
    main()
