"""A sweep file: the base experiment, the search space, the objective, sampler, pruner and budget.

    name: default
    base: {model: {...}, data: {...}, train: {...}}         # an experiment, as for smol train
    space:                                                  # dotted experiment keys
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      train.batch_size: {type: categorical, choices: [8, 16, 32]}
    objective: val_loss                                     # or val_bpb; minimised
    sampler: {type: tpe, seed: 0}                           # tpe | random
    pruner: {type: median, n_startup_trials: 2}             # median | successive_halving | none
    n_trials: 8
    timeout: 0                                              # seconds for the whole sweep, 0 = none
Every field is checked when the file is read, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smollm.config import ConfigError, ExperimentConfig
from smollm.experiment import (
    base_section,
    experiment_schema,
    merge,
    nest,
    read_mapping,
    to_experiment,
)
from smollm.launch import SlurmConfig, slurm_config
from smollm.rundir import path_segment

SWEEP_KEYS = {"name", "description", "base", "space", "objective", "sampler", "pruner", "n_trials", "timeout", "heartbeat_interval", "grace_period", "max_retry", "enqueue", "seeds", "launcher"}  # fmt: skip
OBJECTIVES = ("val_loss", "val_bpb")


@dataclass(frozen=True)
class Param:
    key: str  # dotted experiment key, e.g. train.lr
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()


@dataclass(frozen=True)
class Sweep:
    name: str
    base: Any
    space: tuple[Param, ...]
    objective: str = "val_loss"
    sampler: dict = field(default_factory=dict)
    pruner: dict = field(default_factory=dict)
    n_trials: int = 8
    timeout: float = 0.0
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 2
    enqueue: tuple[dict, ...] = ()
    description: str = ""
    # each trial trains every seed, its objective their mean; () = the base's seed only
    seeds: tuple[int, ...] = ()
    launcher: SlurmConfig = SlurmConfig()  # `launcher:`: each worker's resources on SLURM

    def experiment(
        self, params: dict[str, Any], number: int, seed: int | None = None
    ) -> ExperimentConfig:
        """The trial's experiment: base, then the sampled parameters (typed, as sampled)."""
        name = f"trial-{number:04d}" + (f"-s{seed}" if seed is not None else "")
        layers: list[Any] = [
            nest(params),
            {"tracking": {"group": self.name, "name": name, "job_type": "sweep"}},
        ]
        if seed is not None:
            layers.append({"train": {"seed": seed}})
        return to_experiment(merge(self.base, layers))


# each sampler's and pruner's keys besides `type`, and the integer ones among them
SAMPLER_KEYS = {"tpe": {"seed", "n_startup_trials"}, "random": {"seed"}}
PRUNER_KEYS = {
    "median": {"n_startup_trials", "n_warmup_steps"},
    "successive_halving": {"min_resource", "reduction_factor"},
    "none": set(),
}


def _check_choice(spec: Any, what: str, kinds: dict[str, set[str]], default: str) -> None:
    """`sampler:` or `pruner:`: a mapping naming a known type, its keys known, each one an
    integer >= 0 (min_resource may also be 'auto')."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{what}: expected a mapping, e.g. {{type: {default}}}")
    kind = spec.get("type", default)
    if kind not in kinds:
        *rest, last = kinds
        raise ConfigError(f"{what} {kind!r}: choose {', '.join(rest)} or {last}")
    unknown = sorted(set(spec) - kinds[kind] - {"type"})
    if unknown:
        valid = ", ".join(sorted(kinds[kind])) or "none besides type"
        raise ConfigError(f"{what} {kind}: unknown key(s) {', '.join(unknown)}; valid: {valid}")
    for key in set(spec) - {"type"}:
        value = spec[key]
        if key == "min_resource" and value == "auto":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{what} {kind}: {key}={value!r}: must be an integer >= 0")


def make_sampler(spec: dict):
    """The Optuna sampler a sweep file names (`sampler:`)."""
    import optuna

    _check_choice(spec, "sampler", SAMPLER_KEYS, "tpe")
    kind = spec.get("type", "tpe")
    if kind == "tpe":
        return optuna.samplers.TPESampler(
            seed=spec.get("seed", 0), n_startup_trials=spec.get("n_startup_trials", 4)
        )
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=spec.get("seed", 0))
    raise AssertionError(kind)  # _check_choice refused it


def make_pruner(spec: dict):
    """The Optuna pruner a sweep file names (`pruner:`)."""
    import optuna

    _check_choice(spec, "pruner", PRUNER_KEYS, "median")
    kind = spec.get("type", "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.get("n_startup_trials", 2),
            n_warmup_steps=spec.get("n_warmup_steps", 0),
        )
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.get("min_resource", "auto"),
            reduction_factor=spec.get("reduction_factor", 3),
        )
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise AssertionError(kind)  # _check_choice refused it


def _param(key: str, spec: Any) -> Param:
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise ConfigError(f"space.{key}: give {{type: float|int|categorical, ...}}")
    if spec["type"] == "categorical":
        choices = tuple(spec.get("choices") or ())
        if not choices:
            raise ConfigError(f"space.{key}: categorical needs a non-empty 'choices' list")
        return Param(key, "categorical", choices=choices)
    unknown = set(spec) - {"type", "low", "high", "log"}
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(
            f"space.{key}: {spec['type']} needs low and high (and optional log); got {sorted(spec)}"
        )
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"space.{key}: low and high must be numbers, got {low!r} and {high!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"space.{key}: log={log!r}: true or false")
    low, high = float(low), float(high)
    if not low < high or (log and low <= 0):
        raise ConfigError(
            f"space.{key}: need low < high (and low > 0 with log), got low={low}, high={high}"
        )
    return Param(key, spec["type"], low, high, log)


def _numbers(path: str | Path, raw: dict[str, Any]) -> dict[str, Any]:
    """n_trials, timeout, heartbeat_interval, grace_period, max_retry: checked, as numbers."""
    rules = {  # name: (default, kind, minimum)
        "n_trials": (8, int, 1), "timeout": (0.0, float, 0), "heartbeat_interval": (10, int, 1),
        "grace_period": (30, int, 1), "max_retry": (2, int, 0),
    }  # fmt: skip
    out = {}
    for name, (default, kind, minimum) in rules.items():
        value = raw.get(name, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or (kind is int and value != int(value)) or value < minimum:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"{path}: {name}={value!r}: must be {what} >= {minimum}")
        out[name] = kind(value)
    if out["grace_period"] <= out["heartbeat_interval"]:
        raise ConfigError(f"{path}: grace_period must exceed heartbeat_interval")
    return out


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file; dotlist overrides apply to the base experiment."""
    raw = read_mapping(path, "sweep", SWEEP_KEYS)
    overrides = list(overrides or [])
    launching = [o for o in overrides if o.startswith("launcher.")]
    experiment = [o for o in overrides if o not in launching]
    base = merge(experiment_schema(), [base_section(raw, path), experiment])
    sweep = sweep_from_mapping(raw, str(raw.get("name") or Path(path).stem), base, str(path))
    return replace(sweep, launcher=slurm_config(raw.get("launcher"), launching, str(path)))


def sweep_from_mapping(raw: dict[str, Any], name: str, base: Any, where: str) -> Sweep:
    """A validated Sweep from a sweep file's mapping (or an ablation's `tune:`) and a merged base."""
    path_segment(name, f"{where}: sweep")  # its trials and tables are folders of this name
    if not isinstance(raw.get("space") or {}, dict):
        raise ConfigError(
            f"{where}: space: a mapping of dotted keys, e.g. train.lr: {{type: float, ...}}"
        )
    try:
        space = tuple(_param(k, v) for k, v in (raw.get("space") or {}).items())
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not space:
        raise ConfigError(f"{where}: empty search space")
    if raw.get("objective", "val_loss") not in OBJECTIVES:
        raise ConfigError(
            f"{where}: objective {raw['objective']!r}: choose one of {', '.join(OBJECTIVES)}"
        )
    seeds = raw.get("seeds") or []
    if (
        not isinstance(seeds, list)
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{where}: seeds must be a list of distinct integers")  # fmt: skip
    try:
        make_sampler(raw.get("sampler") or {}), make_pruner(raw.get("pruner") or {})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not isinstance(raw.get("enqueue") or [], list):
        raise ConfigError(f"{where}: enqueue: a list of points, e.g. [{{train.lr: 0.001}}]")
    sweep = Sweep(
        name=name, base=base, space=space, objective=raw.get("objective", "val_loss"), sampler=raw.get("sampler") or {},
        pruner=raw.get("pruner") or {}, enqueue=tuple(raw.get("enqueue") or ()), description=str(raw.get("description") or ""),
        seeds=tuple(seeds), **_numbers(where, raw),
    )  # fmt: skip
    # every point of the space must make a valid experiment (unknown keys, impossible batch sizes)
    corners = {
        p.key: p.choices[0]
        if p.kind == "categorical"
        else (int(p.low) if p.kind == "int" else p.low)
        for p in space
    }
    sweep.experiment(corners, 0)
    for p in space:
        for c in p.choices:
            sweep.experiment({**corners, p.key: c}, 0)
    params = {p.key: p for p in space}
    for point in sweep.enqueue:
        if not isinstance(point, dict) or not set(point) <= set(params):
            raise ConfigError(
                f"{where}: enqueue entry {point!r}: a mapping of space keys ({', '.join(sorted(params))})"
            )
        for key, value in point.items():
            if not _in_space(params[key], value):
                raise ConfigError(f"{where}: enqueue entry {point!r}: {key}={value!r} is not "
                                  f"in the space ({_describe(params[key])})")  # fmt: skip
        sweep.experiment({**corners, **point}, 0)  # an enqueued point is a valid experiment too
    return sweep


def _in_space(p: Param, value: Any) -> bool:
    """Whether `value` is a point of the parameter's range or one of its choices."""
    if p.kind == "categorical":
        return value in p.choices
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    whole = p.kind != "int" or (number and value == int(value))
    return number and whole and p.low <= value <= p.high


def _describe(p: Param) -> str:
    if p.kind == "categorical":
        return f"one of {list(p.choices)}"
    return f"{'an integer' if p.kind == 'int' else 'a number'} in [{p.low:g}, {p.high:g}]"
