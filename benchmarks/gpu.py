"""GPU throughput, side by side in one process: smollm vs transformers, training and decode.

    python benchmarks/gpu.py [--batch 16] [--seq-len 2048] [--steps 10] [--rounds 3]
                             [--decode-tokens 128] [--model RUN_OR_HF_DIR] [--out FILE.md]
                             [--only attention,train,decode,small] [--json FILE.json]

Prints, for whatever CUDA GPU it runs on:
- the device, software versions, the datasheet bf16 peak and a measured one (8192^3 bf16 matmul
  on random data);
- the SDPA backends at the model's attention shape (GQA 9/3, head dim 64, causal, fwd + bwd), and
  which kernel the default dispatch runs;
- training tokens/s, MFU (against both peaks) and peak memory at the 135M shape for ours and
  `LlamaForCausalLM`, eager and torch.compile'd, same weights, same AdamW, bf16 autocast; ours runs
  `smollm.train.train_step` itself (the loss inside the compiled region, no per-step host sync),
  transformers runs `torch.compile(model)` with the loss outside, as users do; ours also with
  train.fused_loss, with train.fused_projections and with train.fp8=lm_head (skipped, and said so,
  before compute 8.9). The timed steps of all rows are interleaved over `--rounds` rounds
  (median), so clock drift hits every row alike;
- decode tokens/s at batch 1 (greedy, bf16): transformers `generate`, ours eager, ours through a
  CUDA graph, ours compiled + CUDA graph, with fused projections, and with the greedy token picked
  on the host (a sync per token: before) vs in the captured step (now); whether each gives the
  eager path's tokens; the weight-bandwidth ceiling; and GPU kernels per token (profiler);
- small models (`--small`, default the `default` ablation: 15 runs at its CPU shape; and
  `--small-ladder FILE`, e.g. benchmarks/ladder-10m.yaml): the wall time of `smol run` one run at a
  time and packed (`--workers K` on this one device), the speed-up, and the largest difference in
  final bpb between the two;
- with `--json FILE`, the headline figures (train tokens/s, MFU and causal MFU, decode tokens/s and
  kernels per token, the small ablation's speed-up) with device, torch, date and commit.

FLOP accounting (`smollm.config.flops_per_token`): 6 x (non-embedding parameters + lm_head) +
12 x layers x dim x seq_len per token (PaLM convention: attention scores counted in full, although
causal kernels skip the masked half); 1.232 GFLOP per token for SmolLM2-135M at 2048. The causal
MFU beside it counts 6 x layers x dim x seq_len for attention instead (llm.c's convention).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.nn.functional as F

from smollm import ModelConfig, SmolLM, load_pretrained, save_pretrained
from smollm.config import SmolError, TrainConfig, flops_per_token
from smollm.runtime import check_fp8, peak_flops, to_device
from smollm.train import DivergenceWatch, LMLoss, StepPlan, make_optimizer, train_step

GB = 1e9
LINES: list[str] = []  # everything printed, for --out
HEADLINE: dict[str, object] = {}  # the figures --json writes (gpu-<device>.json)


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


DEVICE = torch.device("cuda")  # --dry-run: cpu, to check the script itself without a GPU


def cuda_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() by CUDA events (host clock on the CPU dry run), after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if DEVICE.type != "cuda":
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def allocated(peak: bool = False) -> int:
    if DEVICE.type != "cuda":
        return 0
    return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()


def matmul_peak(n: int) -> float:
    """FLOP/s of an n^3 bf16 matmul on random data (several input sets, so not from the cache)."""
    sets = [
        (torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16), torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16))
        for _ in range(3)
    ]  # fmt: skip
    out = torch.empty(n, n, device=DEVICE, dtype=torch.bfloat16)
    i = [0]

    def mm() -> None:
        a, b = sets[i[0] % 3]
        i[0] += 1
        torch.mm(a, b, out=out)

    return 2 * n**3 / cuda_time(mm, 20, 5)


def copy_bandwidth() -> float:
    """Device memory bytes per second (read + write) of a 2 GB device-to-device copy."""
    src = torch.randn(2**29 if DEVICE.type == "cuda" else 2**24, device=DEVICE)
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), 10)
    return 2 * src.numel() * 4 / t


# ---------------------------------------------------------------------------- attention


def attention_backends(batch: int, seq: int, cfg: ModelConfig) -> None:
    """fwd + bwd time of each SDPA backend at the model's attention shape, GQA and expanded K/V."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    hd, H, KV = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    q = torch.randn(batch, H, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, KV, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    flops = 4 * batch * H * seq * seq * hd * 3.5 / 2  # causal: half; bwd = 2.5x fwd
    say(f"\nSDPA at ({batch}, {H}/{KV} heads, {seq}, {hd}), causal, bf16, forward + backward:")
    say(f"{'backend':<12}{'GQA (enable_gqa)':>20}{'K/V expanded':>16}")
    backends = {
        "default": None,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    for name, backend in backends.items():
        cells = []
        for gqa in (True, False):

            def run(gqa: bool = gqa) -> None:
                kk, vv = (
                    (k, v)
                    if gqa
                    else (k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1))
                )
                out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
                out.backward(torch.ones_like(out))

            try:
                ctx = sdpa_kernel([backend]) if backend is not None else _null()
                with ctx:
                    t = cuda_time(run, 5)
                cells.append(f"{t * 1e3:.2f} ms {flops / t / 1e12:.0f} TF")
            except RuntimeError as e:
                cells.append(
                    "unsupported" if "No available kernel" in str(e) else f"error: {str(e)[:30]}"
                )
        say(f"{name:<12}{cells[0]:>20}{cells[1]:>16}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
    names = sorted(
        {
            e.key
            for e in prof.key_averages()
            if any(
                s in e.key.lower() for s in ("flash", "fmha", "cudnn", "attention", "sdpa", "mha")
            )
        }
    )
    say(
        "default dispatch runs: "
        + ("; ".join(n[:90] for n in names) or "(no attention kernel recognised)")
    )


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a) -> None:
        return None


# ---------------------------------------------------------------------------- training


class RandomBlocks:
    """A loader stand-in: random token blocks on the host, as BlockLoader hands them out."""

    def __init__(self, vocab: int, seq: int) -> None:
        self.vocab, self.seq = vocab, seq
        self.g = torch.Generator().manual_seed(0)

    def next(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, self.vocab, (n, self.seq + 1), generator=self.g)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def ours_runner(weights: str, batch: int, seq: int, compile: bool, fused: bool = False,
                fp8: bool = False, projections: bool = False):  # fmt: skip
    """smollm's own training step (smollm.train.train_step) on the model loaded from `weights`;
    `fused`: with train.fused_loss (the chunked output layer + cross-entropy); `fp8`: with
    train.fp8=lm_head (the output layer's matmuls in FP8); `projections`: with
    train.fused_projections (q/k/v and gate/up as one matmul each)."""
    device = DEVICE
    tc = TrainConfig(max_steps=1, compile=compile)
    raw = load_pretrained(weights, device=str(DEVICE)).train()
    if projections:
        raw.fuse_projections(trainable=True)
    if fp8:
        check_fp8(raw.config, seq, "lm_head", DEVICE)
    net = LMLoss(raw, fused=fused, fp8=fp8)
    net = torch.compile(net, dynamic=False) if compile else net
    opt = make_optimizer(raw, tc, device)
    plan = StepPlan(device, torch.bfloat16, batch, 1, 1, 1.0, list(raw.parameters()))
    watch = DivergenceWatch(opt, device, __import__("pathlib").Path(tempfile.gettempdir()))
    loader = RandomBlocks(raw.config.vocab_size, seq)
    state = {"step": 0}

    def step() -> None:
        train_step(net, opt, loader, plan, watch, state["step"])
        state["step"] += 1

    return step, (raw, opt, net), watch


def hf_runner(weights: str, batch: int, seq: int, compile: bool):
    """LlamaForCausalLM with the same weights and AdamW; torch.compile(model), loss outside."""
    from transformers import AutoModelForCausalLM

    device = DEVICE
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).to(device).train()
    opt = make_optimizer(model, TrainConfig(max_steps=1), device)
    fwd = torch.compile(model, dynamic=False) if compile else model
    loader = RandomBlocks(model.config.vocab_size, seq)

    def step() -> None:
        x, y = (to_device(t, device) for t in loader.next(batch))
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            logits = fwd(x).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, (model, opt, fwd), None


def compile_counters() -> str:
    from torch._dynamo.utils import counters

    breaks = sum(counters["graph_break"].values())
    return f"{counters['stats']['unique_graphs']} graph(s) compiled in all, {breaks} graph breaks"


def training(args, weights: str, cfg: ModelConfig, peaks: dict[str, float]) -> None:
    """Build and warm every row (compiling where asked), then time them interleaved."""
    rows = [
        ("transformers, eager", hf_runner, False),
        ("ours, eager", ours_runner, False),
        ("ours, compiled train_step", ours_runner, True),
        ("ours, compiled, fused loss", partial(ours_runner, fused=True), True),
        ("ours, compiled, fused projections", partial(ours_runner, projections=True), True),
        ("ours, compiled, FP8 lm_head", partial(ours_runner, fp8=True), True),
        ("transformers, torch.compile(model)", hf_runner, True),
    ]
    tokens = args.batch * args.seq_len
    fpt = flops_per_token(cfg, args.seq_len)
    causal = flops_per_token(cfg, args.seq_len, causal=True)
    built = []
    for name, make, compile in rows:
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = allocated()
        t = time.perf_counter()
        try:
            step, keep, watch = make(weights, args.batch, args.seq_len, compile)
            for _ in range(3):
                step()
            sync()
        except torch.OutOfMemoryError:
            say(f"{name}: out of memory at {args.batch}x{args.seq_len}")
            continue
        except SmolError as e:  # a switch this device cannot run (FP8 before compute 8.9)
            say(f"{name}: not run: {e}")
            continue
        mem = (allocated(peak=True) - base) / GB
        say(
            f"built {name}: warm-up (compile included) {time.perf_counter() - t:.0f} s, peak {mem:.1f} GB"
        )
        built.append([name, step, keep, watch, mem, []])
        if name == "ours, compiled train_step":  # before transformers compiles anything
            say(f"torch._dynamo after ours compiled: {compile_counters()}")
    for _ in range(args.rounds):  # interleaved: each round times every row
        for row in built:
            row[5].append(cuda_time(row[1], args.steps, warmup=1))
    for row in built:
        if row[3] is not None:
            row[3].check()  # no step was non-finite
    say(f"\nTraining, {args.preset} shape, {args.batch}x{args.seq_len}, bf16 autocast, fused AdamW, grad clip; "
        f"{args.rounds} rounds x {args.steps} steps, interleaved; {fpt / 1e9:.3f} GFLOP/token")  # fmt: skip
    say(
        f"MFU causal: attention's masked half not counted ({causal / 1e9:.3f} GFLOP/token, llm.c's convention)"
    )
    say(
        f"| row | tokens/s | MFU (datasheet {peaks['datasheet'] / 1e12:.0f} TF) | MFU causal (datasheet) | MFU (measured {peaks['measured'] / 1e12:.0f} TF) | peak memory | spread over rounds |"
    )
    say("|---|---:|---:|---:|---:|---:|---:|")
    rates = {}
    for name, _, _, _, mem, times in built:
        t = statistics.median(times)
        rates[name] = tokens / t
        mfu = tokens / t * fpt
        spread = (max(times) - min(times)) / t
        say(
            f"| {name} | {tokens / t:,.0f} | {mfu / peaks['datasheet']:.1%} | {tokens / t * causal / peaks['datasheet']:.1%} | {mfu / peaks['measured']:.1%} | {mem:.1f} GB | {spread:.1%} |"
        )
        keys = {
            "ours, compiled, fused loss": "train_fused_loss",
            "ours, compiled, fused projections": "train_fused_projections",
            "ours, compiled, FP8 lm_head": "train_fp8",
        }
        if name in keys:
            HEADLINE[f"{keys[name]}_tokens_per_s"] = round(tokens / t, 1)
        if name == "ours, compiled train_step":
            HEADLINE.update(train_tokens_per_s=round(tokens / t, 1),
                            train_mfu=round(mfu / peaks["datasheet"], 4),
                            train_mfu_causal=round(tokens / t * causal / peaks["datasheet"], 4))  # fmt: skip
    for ours, ref in (
        ("ours, eager", "transformers, eager"),
        ("ours, compiled train_step", "transformers, torch.compile(model)"),
        ("ours, compiled, fused loss", "ours, compiled train_step"),
        ("ours, compiled, fused projections", "ours, compiled train_step"),
        ("ours, compiled, FP8 lm_head", "ours, compiled train_step"),
    ):
        if ours in rates and ref in rates:
            say(f"ratio {ours} / {ref}: {rates[ours] / rates[ref]:.2f}x")
    if args.profile and any(r[0] == "ours, compiled train_step" for r in built):
        profile_step(next(r[1] for r in built if r[0] == "ours, compiled train_step"))
    built.clear()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def profile_step(step) -> None:
    """The heaviest GPU kernels of two compiled steps, by total CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
        sync()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events) or 1
    say("\nprofile of two compiled steps, top GPU kernels (share of GPU time, calls):")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:18]:
        say(f"  {e.self_device_time_total / total:6.1%} {e.count:6d}  {e.key[:110]}")


# ---------------------------------------------------------------------------- decode


def decode(args, weights: str, label: str) -> None:
    from transformers import AutoModelForCausalLM

    n = args.decode_tokens
    ours = load_pretrained(weights, dtype=torch.bfloat16, device=str(DEVICE))
    ref = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.bfloat16).to(DEVICE).eval()
    ids = torch.tensor([[1, 504, 2268, 253, 655]], device=DEVICE)  # "Once upon a time"-like prompt
    if args.prompt_ids:
        ids = torch.tensor([[int(t) for t in args.prompt_ids.split(",")]], device=DEVICE)
    ids = ids % ours.config.vocab_size
    mask = torch.ones_like(ids)

    def hf() -> torch.Tensor:
        with torch.inference_mode():
            return ref.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip

    variants = {
        "transformers generate": hf,
        "ours, eager": lambda: ours.generate(ids, max_new_tokens=n, graphs=False),
        "ours, CUDA graph": lambda: ours.generate(ids, max_new_tokens=n, graphs=True),
        "ours, compiled + CUDA graph": lambda: ours.generate(ids, max_new_tokens=n, graphs=True, compile=True),
        "ours, fused projections, compiled + CUDA graph, token picked on the host":
            lambda: host_greedy(fused, ids, n),
        "ours, fused projections, compiled + CUDA graph":
            lambda: fused.generate(ids, max_new_tokens=n, graphs=True, compile=True),
    }  # fmt: skip
    fused = load_pretrained(weights, dtype=torch.bfloat16, device=str(DEVICE)).fuse_projections()
    outs, setup = {}, {}
    for name, fn in variants.items():
        t = time.perf_counter()
        try:
            outs[name] = fn()
            sync()
        except Exception:
            say(f"{name}: failed\n{traceback.format_exc()}")
        setup[name] = time.perf_counter() - t
    times = {name: [] for name in outs}
    for _ in range(args.rounds):
        for name in outs:
            times[name].append(cuda_time(variants[name], 1, warmup=0))
    bw = copy_bandwidth()
    weight_bytes = ours.num_parameters() * 2
    say(
        f"\nDecode, batch 1, {ids.shape[1]}-token prompt, {n} new tokens, greedy, bf16; weights: {label}"
    )
    say(
        f"ceiling: {weight_bytes / 1e6:.0f} MB of weights / {bw / GB:,.0f} GB/s (device copy, read + write) = {bw / weight_bytes:,.0f} tok/s"
    )
    say(
        "| row | tokens/s | vs transformers | first call (capture/compile) | tokens vs ours eager |"
    )
    say("|---|---:|---:|---:|---|")
    ref_rate = (
        n / statistics.median(times["transformers generate"])
        if "transformers generate" in times
        else None
    )
    for name, ts in times.items():
        rate = n / statistics.median(ts)
        same = (
            outs[name].tolist() == outs["ours, eager"].tolist() if "ours, eager" in outs else None
        )
        first = ""
        if not same and same is not None:
            a, b = outs[name][0].tolist(), outs["ours, eager"][0].tolist()
            first = f" (first difference at new token {next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y) - ids.shape[1]})"
        ratio = f"{rate / ref_rate:.1f}x" if ref_rate else "—"
        say(
            f"| {name} | {rate:,.0f} | {ratio} | {setup[name]:.1f} s | {'identical' if same else 'differ' + first} |"
        )
        if name == "ours, fused projections, compiled + CUDA graph":  # what smol generate runs
            HEADLINE["decode_tokens_per_s"] = round(rate, 1)
            HEADLINE["decode_identical_to_eager"] = bool(same)
    rows = (
        "ours, eager",
        "ours, compiled + CUDA graph",
        "ours, fused projections, compiled + CUDA graph, token picked on the host",
        "ours, fused projections, compiled + CUDA graph",
    )
    for name in rows:
        if name in outs:
            per_token = kernels_per_token(variants[name], n)
            unit = "kernels" if DEVICE.type == "cuda" else "aten ops"
            say(f"{name}: {per_token:,.1f} {unit} per token (profiler)")
            if name == rows[-1]:
                HEADLINE["decode_kernels_per_token"] = round(per_token, 1)


def host_greedy(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding as it ran before the token was picked inside the captured step: the graph
    gives logits, the host takes the argmax, checks for stop tokens (a sync per token) and feeds
    the token back (`generation._sample_loop` over a logits decoder). The "before" row."""
    from smollm.decode import pool_for
    from smollm.generation import _sample_loop

    B, T = ids.shape
    with torch.inference_mode(), pool_for(model).acquire(model, B, T + n, compile=True) as dec:
        logits = dec.prefill(ids, None)
        tokens = list(_sample_loop(logits, dec.step, B, n, 0.0, None, None, None, 0, None))
    return torch.cat([ids, torch.stack(tokens, dim=1)], dim=1)


def kernels_per_token(generate, n: int) -> float:
    """GPU kernels (on the CPU dry run: aten operators) one `generate` of n tokens runs, per token,
    as the profiler counts them (the prompt's prefill included, spread over the n tokens)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = DEVICE.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        generate()
        sync()
    if cuda:
        count = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        count = sum(1 for e in prof.events() if e.name.startswith("aten::"))
    return count / n


# ---------------------------------------------------------------------------- small models


def small_models(args) -> None:
    """Small models on this one device: the ablation `--small` and, with `--small-ladder`, a ladder
    (each one run at a time and packed), then the headline speed-up (the ablation's)."""
    small_runs(args, "ablation", args.small, args.small_workers, "small_ablation", [])
    if args.small_ladder:
        small_runs(args, "ladder", args.small_ladder, args.small_ladder_workers, "small_ladder",
                   args.small_ladder_overrides)  # fmt: skip


def small_runs(args, kind: str, config: str, workers: int, key: str, overrides: list[str]) -> None:
    """`smol run <kind> <config>` on this one device, one run at a time (`--workers 1`) and packed
    (`--workers K`: K runs share it at once): wall time of each, the speed-up, and how far their
    final bits per byte are apart, beside two sequential passes' own spread (`--small-noise`: the
    noise floor of nondeterministic GPU kernels)."""
    import json
    import subprocess
    from pathlib import Path

    def run(tag: str, k: int) -> tuple[float, dict[str, float]]:
        root = Path(tempfile.mkdtemp(prefix=f"small-{tag}-"))
        cmd = [sys.executable, "-m", "smollm.cli", "run", kind, config, "--runs-dir",
               str(root / "runs"), "--results-dir", str(root / "results"), "--workers", str(k),
               "--quiet", "tracking.mode=disabled", *overrides]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        bpb = {str(p.parent.relative_to(root)): json.loads(p.read_text())["val_bpb"]
               for p in (root / "runs").rglob("summary.json") if p.parent.name != "summary"}  # fmt: skip
        return wall, bpb

    seq, bpb_seq = run("seq", 1)
    packed, bpb_packed = run("packed", workers)
    apart = max(abs(bpb_packed[k] - bpb_seq[k]) for k in bpb_seq)
    noise = None
    if args.small_noise:  # a second sequential pass: what the kernels' own nondeterminism gives
        _, bpb_again = run("seq2", 1)
        noise = max(abs(bpb_again[k] - bpb_seq[k]) for k in bpb_seq)
    speedup = seq / packed
    say(f"\nSmall models: {kind} `{config}` ({len(bpb_seq)} runs) on one device:")
    say("| how | wall time | speed-up |")
    say("|---|---:|---:|")
    say(f"| one run at a time (--workers 1) | {seq:.0f} s | 1.0x |")
    say(f"| packed (--workers {workers}) | {packed:.0f} s | {speedup:.2f}x |")
    floor = (f"two sequential passes: {noise:.2e}" if noise is not None
             else "--small-noise adds the sequential passes' own spread")  # fmt: skip
    say(f"final bpb, packed vs sequential: max |diff| {apart:.2e} ({floor})")
    HEADLINE.update({f"{key}_speedup": round(speedup, 2), f"{key}_runs": len(bpb_seq),
                     f"{key}_seconds": [round(seq, 1), round(packed, 1)],
                     f"{key}_max_bpb_diff": apart, f"{key}_noise_bpb_diff": noise})  # fmt: skip


# ---------------------------------------------------------------------------- main


def main() -> None:
    global DEVICE
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=16, help="micro-batch of the training rows")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="timed steps per row per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--preset", default="smollm2-135m")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--model", help="weights for decode (run dir or HF dir; default: random init)")
    p.add_argument("--prompt-ids", help="comma-separated prompt token ids for decode")
    p.add_argument("--only", default="attention,train,decode,small", help="sections to run")
    p.add_argument(
        "--profile", action="store_true", help="print the top kernels of a compiled step"
    )
    p.add_argument(
        "--small",
        default="default",
        help="the ablation of small models the `small` section runs sequential vs packed",
    )
    p.add_argument(
        "--small-workers", type=int, default=5, help="runs packed onto the device at once"
    )
    p.add_argument("--small-ladder", default="",
                   help="also this ladder (a YAML path, e.g. benchmarks/ladder-10m.yaml), sequential vs packed")  # fmt: skip
    p.add_argument("--small-ladder-workers", type=int, default=6,
                   help="the ladder's runs packed onto the device at once")  # fmt: skip
    p.add_argument("--small-ladder-overrides", nargs="*", default=[],
                   help="key=value overrides of the ladder's runs (e.g. data.tokenizer=.gpu/tok)")  # fmt: skip
    p.add_argument("--small-noise", action="store_true",
                   help="also a second sequential pass: the noise floor of the bpb comparison")  # fmt: skip
    p.add_argument("--out", help="also write the output to this file")
    p.add_argument(
        "--json", help="also write the headline figures to this JSON file (gpu-<device>.json)"
    )
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: run every section on the CPU with a 2-layer model (checks the script, measures nothing)")  # fmt: skip
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="no benchmark: merge these --json files (a measured figure beats a null) into --json")  # fmt: skip
    args = p.parse_args()
    for path in (args.out, args.json):  # made now: a missing folder must not lose the figures
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.merge:
        merge_headlines(args.merge, args.json)
        return
    overrides = {}
    if args.dry_run:
        DEVICE = torch.device("cpu")
        args.small, args.small_workers = "smoke", 2  # the CI-sized ablation: seconds, not minutes
        if args.small_ladder:
            args.small_ladder, args.small_ladder_workers = tiny_ladder(args.small_ladder), 2
        overrides = dict(
            dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128, vocab_size=512
        )
    elif not torch.cuda.is_available():
        sys.exit(
            "benchmarks/gpu.py needs a CUDA device (none found); --dry-run checks it on the CPU"
        )
    import transformers

    only = set(args.only.split(","))
    if DEVICE.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        where = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
    else:
        where = (
            f"CPU dry run ({torch.get_num_threads()} threads): checks the script, measures nothing"
        )
    say(
        f"device: {where}, torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}"
    )
    peaks = {"datasheet": peak_flops(TrainConfig(max_steps=1), DEVICE) or float("nan")}
    peaks["measured"] = matmul_peak(8192 if DEVICE.type == "cuda" else 512)
    say(
        f"bf16 peak: datasheet {peaks['datasheet'] / 1e12:.0f} TFLOP/s, measured 8192^3 matmul {peaks['measured'] / 1e12:.0f} TFLOP/s"
    )
    cfg = ModelConfig.from_preset(args.preset, **overrides)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights = tmp
        save_pretrained(SmolLM(cfg), tmp)  # random init: the same weights for both libraries
        decode_weights = weights
        if args.model:
            decode_weights = os.path.join(tmp, "decode")
            save_pretrained(load_pretrained(args.model), decode_weights)
        sections = {
            "attention": lambda: attention_backends(args.batch, args.seq_len, cfg),
            "train": lambda: training(args, weights, cfg, peaks),
            "decode": lambda: decode(args, decode_weights, args.model or "random init"),
            "small": lambda: small_models(args),
        }
        for section, fn in sections.items():
            if section not in only or (section == "attention" and DEVICE.type != "cuda"):
                continue
            try:
                fn()
            except Exception:
                say(f"section {section} failed:\n{traceback.format_exc()}")
            write_outputs(args)  # after each section: a call cut off at its limit keeps these


def write_outputs(args) -> None:
    """--out (everything printed so far) and --json (the headline figures so far)."""
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(LINES) + "\n")
    if args.json:
        write_headline(args.json)


def merge_headlines(paths: list[str], out: str | None) -> None:
    """The headline figures of several calls (train, decode, small) as one gpu-<device>.json: a
    figure some file measured wins over another's null; printed, and written to `out`. A
    `smol train` perf.jsonl (train-perf[-fused].jsonl) adds what the training loop itself reported."""
    import json

    merged: dict = {}
    for path in paths:
        if path.endswith(".jsonl"):
            record = smol_train_perf(path)
        else:
            with open(path) as f:
                record = json.load(f)
        for k, v in record.items():
            if v is not None or k not in merged:
                merged[k] = v
    text = json.dumps(merged, indent=2) + "\n"
    print(text, end="")
    if out:
        with open(out, "w") as f:
            f.write(text)


def smol_train_perf(path: str) -> dict:
    """The median tokens/s, MFU and causal MFU of a `smol train` perf.jsonl, its first logged
    window (compile included) left out; keys `smol_train[_fused]_...` after the file's name."""
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = rows[1:] or rows
    name = Path(path).stem.replace("train-perf", "smol_train").replace("-", "_")
    out = {}
    for key in ("tokens_per_s", "mfu", "mfu_causal"):
        values = [r.get(key) for r in rows]
        out[f"{name}_{key}"] = (
            round(statistics.median(values), 4) if values and None not in values else None
        )
    return out


def tiny_ladder(path: str) -> str:
    """The ladder at `path` cut to a CPU-sized copy for --dry-run: one rung of a 2-layer model,
    a few steps of 2 x 64 tokens, fp32, not compiled, a small BPE (checks the path, not speed)."""
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f)
    raw["name"] = f"{raw['name']}-dry-run"
    base = raw["base"]
    base["model"] = {"max_seq_len": 64}
    base["data"] = {**base["data"], "seq_len": 64, "tokenizer": "bpe-512"}
    base["train"] = {**base["train"], "batch_size": 2, "micro_batch_size": 2, "dtype": "fp32",
                     "compile": False, "eval_blocks": 2}  # fmt: skip
    shape = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 128}
    raw["rungs"] = [{"name": "tiny", "model": shape, "tokens": 3 * 2 * 64}]
    raw["match_multiple"] = 1  # so tiny MLPs can match
    out = os.path.join(tempfile.mkdtemp(prefix="ladder-dry-"), "ladder.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(raw, f)
    return out


def write_headline(path: str) -> None:
    """gpu-<device>.json: the headline figures with the device, versions, date and commit, so
    machines and commits compare without parsing prose (a figure not measured is null)."""
    import datetime
    import json
    import subprocess

    git = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True)
    keys = ("train_tokens_per_s", "train_mfu", "train_mfu_causal", "decode_tokens_per_s",
            "decode_kernels_per_token", "small_ablation_speedup")  # fmt: skip
    record = {
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "git": git.stdout.strip() or None,
        **{k: HEADLINE.get(k) for k in keys},
        **{k: v for k, v in HEADLINE.items() if k not in keys},
    }
    record = {k: None if isinstance(v, float) and v != v else v for k, v in record.items()}  # NaN
    with open(path, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
