"""`smol run ladder`: an ablation at several model sizes, each rung an ablation of its own.

A ladder file (`experiments/ladder*.yaml`, or any path):
    name: ladder
    base: {model: {...}, data: {...}, train: {...}, tracking: {...}}   # as an ablation's
    rungs:                                  # a shape per rung, or a non-embedding parameter count
      - {name: xs, model: {dim: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, intermediate_size: 192}}
      - {name: m, params: 800000}           # depth from base's width/depth ratio, then its width
    tokens_per_param: 20                    # every rung's budget: x the baseline's non-embedding
                                            # parameters there (or a rung's own tokens: / flops:)
    warmup_fraction: 0.25                   # each rung's warmup, as a share of its steps
    lr_rule: width                          # constant | width (lr x lr_dim / dim) ; or tune: per rung
    lr_dim: 128
    variants: [v1, v2, full]
    seeds: [0, 1, 2]
    baseline: full
    match: params                           # none | params | flops, as in an ablation
    target: {preset: smollm2-135m, seq_len: 2048}   # where the fits extrapolate to
Each rung is an `Ablation` (smollm.ablation): its runs land in runs/<ladder>/<rung>/<variant>-s<seed>/
and go through the same resume, identity, workers and SLURM launcher; every run's W&B group is the
ladder, with `variant`, `size` (the rung) and `seed` in its config. The fits are smollm.scaling's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smollm.ablation import (
    ABLATION_KEYS,
    Ablation,
    Source,
    ablation_from_mapping,
    check_shapes,
    run_ablation,
)
from smollm.config import ConfigError, ModelConfig, param_count, with_count
from smollm.experiment import check_mapping, read_mapping
from smollm.rundir import path_segment, write_json

LADDER_KEYS = {"name", "description", "base", "rungs", "variants", "seeds", "baseline", "match",
               "match_multiple", "tokens_per_param", "warmup_fraction", "lr_rule", "lr_dim",
               "target", "tune", "launcher", "from_sweep"}  # fmt: skip
RUNG_KEYS = {"name", "model", "params", "tokens", "flops", "tokens_per_param"}
TARGET_KEYS = {"preset", "model", "seq_len", "tokens_per_param"}
LR_RULES = ("constant", "width")


@dataclass(frozen=True)
class Ladder:
    """A ladder file, read: its rungs' raw specs and how each becomes an ablation."""

    name: str
    raw: dict
    path: str
    overrides: tuple[str, ...] = ()
    rungs: tuple[str, ...] = ()
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def rung(self, name: str) -> Ablation:
        """The rung's ablation: the base at the rung's shape, its token budget in steps."""
        if name not in self._cache:
            if name not in self.rungs:
                raise ConfigError(f"{self.path}: no rung {name!r} ({', '.join(self.rungs)})")
            spec = next(r for r in self.raw["rungs"] if r["name"] == name)
            self._cache[name] = _rung_ablation(self, spec)
        return self._cache[name]

    def target(self) -> Ablation:
        """The extrapolation target as a rung (never run): the target shape and context, its
        budget the ladder's tokens per parameter (or the target's own)."""
        if "target" not in self._cache:
            spec = self.raw.get("target") or {}
            check_mapping(spec, TARGET_KEYS, f"{self.path}: target:", "target")
            preset = ModelConfig.from_preset(str(spec.get("preset", "smollm2-135m")))
            shape = {k: getattr(preset, k) for k in SHAPE_FIELDS}
            seq_len = spec.get("seq_len", 2048)
            if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
                raise ConfigError(f"{self.path}: target.seq_len={seq_len!r}: an integer >= 2")
            rung = {"name": "target", "model": {**shape, "max_seq_len": seq_len, **(spec.get("model") or {})},
                    **({"tokens_per_param": spec["tokens_per_param"]} if "tokens_per_param" in spec else {})}  # fmt: skip
            self._cache["target"] = _rung_ablation(self, rung, {"data": {"seq_len": seq_len}})
        return self._cache["target"]


SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size")


def load_ladder(path: str | Path, overrides: list[str] | None = None) -> Ladder:
    """Read a ladder file and check every rung (each one an ablation) before anything runs;
    dotlist overrides apply to every rung's base experiment, as for an ablation."""
    return ladder_from_mapping(read_mapping(path, "ladder", LADDER_KEYS), path, overrides)


def ladder_from_mapping(raw: dict, path: str | Path, overrides: list[str] | None = None) -> Ladder:
    """A ladder from its file's mapping (as read, or as recorded in runs/<ladder>/ladder.json);
    `path` names it in errors and is where its workers reload it from."""
    check_mapping(raw, LADDER_KEYS, f"{path}:", "ladder")
    name = path_segment(str(raw.get("name") or Path(path).stem), f"{path}: ladder")
    check_shapes(raw, path)
    lr_dim = raw.get("lr_dim")
    if lr_dim is not None and (
        isinstance(lr_dim, bool) or not isinstance(lr_dim, (int, float)) or not lr_dim > 0
    ):
        raise ConfigError(f"{path}: lr_dim={lr_dim!r}: must be a width > 0")
    rungs = raw.get("rungs")
    if not isinstance(rungs, list) or not rungs:
        raise ConfigError(f"{path}: rungs: a list of {{name, model | params, tokens?}}")
    for i, rung in enumerate(rungs):
        check_mapping(rung, RUNG_KEYS, f"{path}: rungs[{i}]:", "rung")
        if "name" not in rung:
            raise ConfigError(f"{path}: rungs[{i}]: give it a name")
        path_segment(str(rung["name"]), f"{path}: rung")  # a rung's name is a directory
        if str(rung["name"]) == "summary":  # runs/<ladder>/summary/ is its W&B summary run
            raise ConfigError(f"{path}: a rung cannot be named 'summary'")
        if "model" in rung and not isinstance(rung["model"], dict):
            raise ConfigError(
                f"{path}: rung {rung['name']!r}: model: a mapping of ModelConfig fields"
            )
        if ("model" in rung) == ("params" in rung):
            raise ConfigError(
                f"{path}: rung {rung['name']!r}: give a model shape or params, one of them"
            )
        if sum(k in rung for k in ("tokens", "flops", "tokens_per_param")) > 1:
            raise ConfigError(
                f"{path}: rung {rung['name']!r}: tokens, flops or tokens_per_param: one"
            )
    names = [str(r["name"]) for r in rungs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate rung names")
    rule = raw.get("lr_rule", "constant")
    if rule not in LR_RULES:
        raise ConfigError(f"{path}: lr_rule: {rule!r}: choose {' or '.join(LR_RULES)}")
    ladder = Ladder(name, raw, str(path), tuple(overrides or ()), tuple(names))
    for rung in names:
        ladder.rung(rung)
    ladder.target()
    return ladder


def load_rung(path: str, overrides: list[str], rung: str) -> Ablation:
    """One rung of a ladder file, as a worker or SLURM task rebuilds it (`Source.loader`)."""
    return load_ladder(path, overrides).rung(rung)


def _deep(a: dict, b: dict) -> dict:
    """`b` merged into `a`, nested mappings key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _rung_ablation(ladder: Ladder, spec: dict, extra: dict | None = None) -> Ablation:
    """A rung as an ablation: the ladder's base at the rung's shape, with the rung's token budget
    (as steps of the base's batch and context), warmup share and learning rate."""
    raw, name = ladder.raw, str(spec["name"])
    label = f"{ladder.path}: rung {name}"
    shared = {k: raw[k] for k in ABLATION_KEYS & set(raw) if k not in ("name", "base")}
    source = Source(ladder.path, ladder.overrides, functools.partial(load_rung, rung=name))

    def ablation(base: dict, only_baseline: bool = False) -> Ablation:
        mapping = {**shared, "name": name, "base": base, "reference": False}
        if only_baseline:  # the base's own shape, where variants may coincide: the baseline alone
            mapping["variants"] = [_baseline_spec(raw)]
        return ablation_from_mapping(mapping, label, list(ladder.overrides), source, size=name,
                                     group=ladder.name)  # fmt: skip

    base = _deep(raw.get("base") or {}, extra or {})
    unknown = {"train": {"max_steps": 1}}  # the budget is not known yet
    template = ablation(_deep(base, unknown), only_baseline=True)
    template = template.experiment(template.variants[0], template.seeds[0])
    shape = spec.get("model")
    if shape is None:  # a parameter count: a shape in the proportions of the base's baseline
        shape = pick_shape(spec["params"], template.model, _multiple(raw), label)
    pre = ablation(_deep(base, {"model": shape, **unknown}))
    exp = pre.experiment(_baseline(pre), pre.seeds[0])
    tokens = _budget(raw, spec, param_count(exp.model, non_embedding=True), label)
    steps = max(1, math.ceil(tokens / (exp.train.batch_size * exp.data.seq_len)))
    train: dict[str, Any] = {"max_steps": steps}
    if raw.get("warmup_fraction") is not None:
        fraction = raw["warmup_fraction"]
        if not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ConfigError(f"{ladder.path}: warmup_fraction={fraction!r}: must be in [0, 1)")
        train["warmup_steps"] = round(fraction * steps)
    if raw.get("lr_rule", "constant") == "width":  # Adam's hidden-layer lr ~ 1/width (muP)
        lr_dim = float(raw.get("lr_dim") or template.model.dim)
        train["lr"] = template.train.lr * lr_dim / exp.model.dim
    return ablation(_deep(base, {"model": shape, "train": train}))


def _baseline_spec(raw: dict) -> Any:
    """The baseline's entry in the ladder's variants (a preset name or {name, preset, ...})."""
    specs = raw.get("variants") or []
    name = lambda v: v if isinstance(v, str) else (v or {}).get("name", (v or {}).get("preset"))  # noqa: E731
    return next((v for v in specs if name(v) == raw.get("baseline")), specs[0] if specs else None)


def _multiple(raw: dict) -> int:
    multiple = raw.get("match_multiple", 8)
    valid = isinstance(multiple, int) and not isinstance(multiple, bool) and multiple >= 1
    return multiple if valid else 8  # an invalid one is reported when the rung's ablation is read


def _baseline(ablation: Ablation):
    return next((v for v in ablation.variants if v.name == ablation.baseline), ablation.variants[0])


def _budget(raw: dict, spec: dict, params: int, label: str) -> int:
    """A rung's training tokens: its own `tokens`, its `flops` as 6 * N * D (N: the baseline's
    non-embedding parameters), or tokens_per_param (the rung's, else the ladder's) x N."""
    if "tokens" in spec or "flops" in spec:
        key = "tokens" if "tokens" in spec else "flops"
        value = spec[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{label}: {key}={value!r}: must be a positive number")
        return int(value if key == "tokens" else value / (6 * params))
    per = spec.get("tokens_per_param", raw.get("tokens_per_param"))
    if per is None:
        raise ConfigError(
            f"{label}: no token budget: set tokens_per_param (or the rung's tokens/flops)"
        )
    if not isinstance(per, (int, float)) or isinstance(per, bool) or per <= 0:
        raise ConfigError(f"{label}: tokens_per_param={per!r}: must be a positive number")
    return int(per * params)


def pick_shape(params: Any, template: ModelConfig, multiple: int, label: str) -> dict[str, int]:
    """The shape with `params` non-embedding parameters in the template's proportions: depth from
    its width/depth ratio (params ~ c * layers * width^2), width rounded to whole KV-head groups of
    its head size, then the MLP width that makes the count (to a multiple of `multiple`)."""
    if not isinstance(params, int) or isinstance(params, bool) or params < 1:
        raise ConfigError(f"{label}: params={params!r}: must be a positive integer")
    group = template.n_heads // template.n_kv_heads
    aspect = template.dim / template.n_layers
    per_layer = param_count(template, non_embedding=True) / template.n_layers / template.dim**2
    layers = max(1, round((params / (per_layer * aspect**2)) ** (1 / 3)))
    heads = group * max(1, round(aspect * layers / (group * template.head_dim)))
    cfg = dataclasses.replace(template, dim=heads * template.head_dim, n_layers=layers,
                              n_heads=heads, n_kv_heads=heads // group)  # fmt: skip
    try:
        cfg = with_count(cfg, params, 1, "params", multiple)
    except ConfigError as e:
        raise ConfigError(f"{label}: params={params:,}: {e}") from None
    return {k: getattr(cfg, k) for k in SHAPE_FIELDS}


def run_ladder(
    ladder: Ladder, runs_root: Path, progress: bool = True, workers: int = 1,
    launcher: str = "local", wait: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every rung's ablation, smallest first, through `run_ablation` (resume, workers, SLURM); on
    SLURM every rung's array is submitted before any is waited for. Outcome rows name the rung."""
    from smollm.rundir import LadderDir

    root = LadderDir(runs_root, ladder.name)
    root.path.mkdir(parents=True, exist_ok=True)
    write_json(root.spec, ladder.raw)
    first_pass = wait and launcher == "slurm"  # submit everything, then wait rung by rung
    outcomes = []
    for rounds in [False, True] if first_pass else [wait]:
        outcomes = []
        for name in ladder.rungs:
            print(f"[rung {name}]", file=sys.stderr, flush=True)
            rows = run_ablation(ladder.rung(name), root.path, progress, workers, launcher, rounds)
            outcomes += [{**o, "run": f"{name}/{o['run']}"} for o in rows]
    return outcomes
