"""Training throughput: smollm vs transformers' LlamaForCausalLM, same shape/batch/dtype/optimizer.

    python benchmarks/train.py [--batch 4] [--seq-len 256] [--steps 5] [--dtypes fp32,bf16]

Both models are built from the same smollm2-135m weights, trained with the same AdamW
(SmolLM2 betas, weight decay 0.01) and grad clip, alternately in one process. Prints tokens/s
and the ratio; on CUDA also MFU against the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.nn.functional as F

from smollm import ModelConfig, SmolLM, load_pretrained, save_pretrained
from smollm.config import TrainConfig, flops_per_token
from smollm.runtime import peak_flops
from smollm.train import make_optimizer


def step_fn(model, opt, x, y, amp, hf: bool):
    def step() -> None:
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            logits = model(x).logits if hf else model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, steps: int, device: torch.device) -> float:
    step()  # warm-up
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--preset", default="smollm2-135m")
    args = p.parse_args()
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = ModelConfig.from_preset(args.preset)
    tcfg = TrainConfig(max_steps=1)
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device=device)
    y = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device=device)
    tokens = args.batch * args.seq_len
    flops = flops_per_token(cfg, args.seq_len)
    peak = peak_flops(tcfg, device)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), {args.preset}, batch {args.batch}x{args.seq_len}, AdamW"
    )
    print(
        f"{'dtype':<6}{'smollm tok/s':>14}{'transformers tok/s':>20}{'ratio':>8}"
        + (f"{'MFU':>8}" if peak else "")
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(SmolLM(cfg), tmp)
        for name in args.dtypes.split(","):
            amp = {"fp32": None, "bf16": torch.bfloat16}[name]
            ours = load_pretrained(tmp, device=str(device)).train()
            ref = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(device).train()
            t_ours = timed(
                step_fn(ours, make_optimizer(ours, tcfg, device), x, y, amp, False),
                args.steps,
                device,
            )
            t_ref = timed(
                step_fn(ref, make_optimizer(ref, tcfg, device), x, y, amp, True), args.steps, device
            )
            mfu = f"{tokens / t_ours * flops / peak:>7.1%}" if peak else ""
            print(
                f"{name:<6}{tokens / t_ours:>14.0f}{tokens / t_ref:>20.0f}{t_ref / t_ours:>7.2f}x{mfu}"
            )
            del ours, ref


if __name__ == "__main__":
    main()
