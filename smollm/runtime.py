"""Where and how a run computes: device, torchrun process group, autocast, peak FLOP/s and the
throughput meter (tokens/s, MFU, peak memory). The training loop asks; it does not know."""

from __future__ import annotations

import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from smollm.config import ModelConfig, SmolError, TrainConfig, param_count

# Dense bf16 tensor-core peaks (FLOP/s) by device-name substring, for MFU.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
}


@dataclass
class Dist:
    """This process's place in a torchrun job (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def slurm_rendezvous() -> None:
    """Under `srun -n N` (one process per task, no torchrun): torch's rendezvous variables from
    SLURM's, so one run spans the step's nodes. RANK = SLURM_PROCID, WORLD_SIZE =
    SLURM_STEP_NUM_TASKS, LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR = the step's first node,
    MASTER_PORT = 20000 + job id mod 20000 (two jobs on one node do not collide). Set variables
    (a torchrun inside srun) win."""
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))  # set inside an srun step only
    if tasks <= 1 or "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    nodes = os.environ.get("SLURM_STEP_NODELIST", "localhost")
    first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                           text=True).stdout.split() or [nodes]  # fmt: skip
    job = int(os.environ.get("SLURM_JOB_ID", "0"))
    os.environ.update({"RANK": os.environ["SLURM_PROCID"], "WORLD_SIZE": str(tasks),
                       "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"), "MASTER_ADDR": first[0],
                       "MASTER_PORT": os.environ.get("MASTER_PORT", str(20000 + job % 20000))})  # fmt: skip


def init_distributed(device_type: str) -> Dist:
    """Join the torchrun (or `srun -n N`) process group when there is one (gloo on CPU, nccl on
    CUDA)."""
    slurm_rendezvous()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world)


def resolve_device(name: str, local_rank: int) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a device; plain cuda means this rank's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SmolError(f"train.device={name!r} but CUDA is not available")
    return torch.device(name)


def check_fp8(model: ModelConfig, seq_len: int, fp8: str, device: torch.device) -> None:
    """train.fp8 on a GPU needs FP8 tensor cores (compute capability >= 8.9: Ada, Hopper) and
    cuBLAS's FP8 shapes (every matrix side a multiple of 16); on CPU any shape runs."""
    if not fp8 or device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise SmolError(f"train.fp8={fp8}: {torch.cuda.get_device_name(device)} (compute "
                        f"capability {major}.{minor}) has no FP8 matmuls; they need 8.9 or newer")  # fmt: skip
    sides = {"model.dim": model.dim, "the vocabulary": model.vocab_size, "data.seq_len": seq_len}
    odd = [f"{name} {n}" for name, n in sides.items() if n % 16]
    if odd:
        raise SmolError(f"train.fp8={fp8} on a GPU needs multiples of 16: {', '.join(odd)}")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default, fp32 on CPU unless asked."""
    choice = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return torch.bfloat16 if choice == "bf16" else None


def peak_flops(cfg: TrainConfig, device: torch.device) -> float:
    """Dense bf16 peak of the device (datasheet), or train.peak_flops; 0 when unknown (no MFU)."""
    if cfg.peak_flops:
        return cfg.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)
    return 0.0


def peak_memory(device: torch.device) -> int:
    """Peak bytes allocated on the GPU, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)  # SLURM's notice; submitit's USR2


class PreemptionFlag:
    """While active, SIGTERM and SIGUSR2 only set a flag (nothing is saved inside a handler);
    the training loop asks `due` at its step boundaries and saves there. Under DDP the ranks
    agree (one all-reduce) at the steps where they already sync with the host."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._set)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _set(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def due(self, synced_step: bool, world_size: int, device: torch.device) -> bool:
        """Whether to stop after this step: at once alone; under DDP at a synced step, when
        any rank was signalled."""
        if world_size == 1:
            return self.signum is not None
        if not synced_step:
            return False
        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.signum is not None


MEMORY_CHECK_ENV = "SMOLLM_NO_MEMORY_CHECK"  # =1: build the model whatever the estimate says


def training_memory(model: ModelConfig, micro_batch: int, seq_len: int, half: bool) -> int:
    """A lower bound on a training run's bytes before its model is built: fp32 weights, their
    gradients and AdamW's two moments (16 bytes per parameter), plus one micro-batch's logits
    (and their gradient) and what each layer keeps for the backward pass: its input and norm,
    q, k, v and the MLP's two hidden halves (a fused, compiled step keeps about this much; the
    135M run at 32 x 2048 in bf16 estimates 35 GB and peaks at 44 GB on an H100), plus 64 KiB a
    layer for its modules, autograd's records and allocator slack (a 32-wide layer measured
    ~135 KiB more than its tensors on CPU)."""
    width = 2 if half else 4
    tokens = micro_batch * seq_len
    kv = model.n_kv_heads * model.head_dim
    per_token_layer = 3 * model.dim + 2 * kv + 2 * model.intermediate_size
    activations = tokens * model.n_layers * per_token_layer * width
    logits = 2 * tokens * model.vocab_size * width
    return 16 * param_count(model) + activations + logits + model.n_layers * 64 * 1024


def available_memory(device: torch.device) -> int:
    """Free bytes where the run will compute: the GPU's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(model: ModelConfig, micro_batch: int, seq_len: int, device: torch.device,
                 half: bool) -> None:  # fmt: skip
    """Refuse, in one line and before anything is allocated, a run that cannot fit the device
    (a typo such as model.dim=100000); the estimate is stated and can be overridden."""
    need = training_memory(model, micro_batch, seq_len, half)
    have = available_memory(device)
    if need > have and os.environ.get(MEMORY_CHECK_ENV) != "1":
        raise SmolError(
            f"this run needs at least {need / 2**30:,.1f} GiB ({param_count(model):,} parameters "
            f"x 16 bytes for weights, gradients and AdamW, plus activations at micro-batch "
            f"{micro_batch} x {seq_len}) but {device.type} has {have / 2**30:,.1f} GiB free; "
            f"shrink the model or the micro-batch, or set {MEMORY_CHECK_ENV}=1 to try anyway"
        )


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on the device; to a GPU through pinned memory, so the copy does not block."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class Throughput:
    """Tokens/s, MFU and peak memory between two log points (evaluation time excluded). MFU in the
    PaLM convention (`flops_per_tok`: attention scores counted in full) and, given
    `causal_flops_per_tok`, the causal one (their masked half not counted) beside it."""

    def __init__(
        self,
        tokens: int,
        flops_per_tok: int,
        peak: float,
        device: torch.device,
        causal_flops_per_tok: int | None = None,
    ) -> None:
        self.tokens, self.flops, self.peak, self.device = tokens, flops_per_tok, peak, device
        self.causal = causal_flops_per_tok
        self.t = time.perf_counter()

    def row(self, step: int, tokens: int) -> dict[str, Any]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        tps = (tokens - self.tokens) / max(time.perf_counter() - self.t, 1e-9)
        self.tokens, self.t = tokens, time.perf_counter()
        mfu = round(tps * self.flops / self.peak, 4) if self.peak else None
        mem = round(peak_memory(self.device) / 2**20, 1)
        causal = {}
        if self.causal is not None:
            causal["mfu_causal"] = round(tps * self.causal / self.peak, 4) if self.peak else None
        return {
            "step": step,
            "tokens": tokens,
            "tokens_per_s": round(tps, 1),
            "mfu": mfu,
            **causal,
            "peak_memory_mb": mem,
        }

    def restart(self) -> None:
        self.t = time.perf_counter()


def machine() -> dict[str, Any]:
    """What the runs ran on, for the provenance line of the tables."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    else:
        cpu = (
            next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                platform.processor(),
            )
            if Path("/proc/cpuinfo").is_file()
            else platform.processor()
        )
        info["device"] = f"CPU: {cpu}"
    return info


# ---------------------------------------------------------------------------- worker processes


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES's entries, else every device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_gpu(i: int, gpus: list[str]) -> str | None:
    """Worker i's GPU: GPU i mod n of `gpus`; None where there is none."""
    return gpus[i % len(gpus)] if gpus else None


def _die_with_parent(target, parent: int, *args) -> None:
    """A worker's entry: it ends when the process that started it ends (SIGKILLed or not), instead
    of training on as an orphan; what it wrote is resumable like any killed run."""
    import signal

    if sys.platform.startswith("linux"):  # the kernel sends SIGTERM at the parent's death
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    target(*args)


def start_workers(target, args: list[tuple], gpus: list[str] | None = None) -> list:
    """One spawned process per `args` tuple; worker i sees only GPU i mod n (CUDA_VISIBLE_DEVICES,
    set before its start, so it is `cuda:0` there and no two workers share a device by accident)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    gpus = visible_gpus() if gpus is None else gpus
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    procs = []
    try:
        for i, a in enumerate(args):
            gpu = worker_gpu(i, gpus)
            if gpu is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            proc = ctx.Process(target=_die_with_parent, args=(target, os.getpid(), *a))
            proc.start()
            procs.append(proc)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return procs
