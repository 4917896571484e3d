"""`smol sweep`: Optuna over learning rate and batch size (and more), trials being training runs.

A sweep file (sweeps/*.yaml):
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
Storage is an SQLite file by default, or any SQLAlchemy URL (--storage postgresql://...). Workers
send heartbeats: a worker killed mid-trial leaves a trial that is marked failed and retried.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smollm.config import ConfigError, ExperimentConfig, SmolError
from smollm.experiment import experiment_schema, merge, read_mapping, to_experiment

SWEEP_KEYS = {"name", "description", "base", "space", "objective", "sampler", "pruner", "n_trials", "timeout", "heartbeat_interval", "grace_period", "max_retry", "enqueue"}  # fmt: skip
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

    def experiment(self, params: dict[str, Any], number: int) -> ExperimentConfig:
        """The trial's experiment: base, then the sampled parameters."""
        track = {
            "tracking": {"group": self.name, "name": f"trial-{number:04d}", "job_type": "sweep"}
        }
        return to_experiment(merge(self.base, [[f"{k}={v}" for k, v in params.items()], track]))


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
    low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", False))
    if not low < high or (log and low <= 0):
        raise ConfigError(
            f"space.{key}: need low < high (and low > 0 with log), got low={low}, high={high}"
        )
    return Param(key, spec["type"], low, high, log)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file; dotlist overrides apply to the base experiment."""
    raw = read_mapping(path, "sweep", SWEEP_KEYS)
    space = tuple(_param(k, v) for k, v in (raw.get("space") or {}).items())
    if not space:
        raise ConfigError(f"{path}: empty search space")
    if raw.get("objective", "val_loss") not in OBJECTIVES:
        raise ConfigError(
            f"{path}: objective {raw['objective']!r}: choose one of {', '.join(OBJECTIVES)}"
        )
    sweep = Sweep(
        name=str(raw.get("name") or Path(path).stem), base=merge(experiment_schema(), [raw.get("base") or {}, list(overrides or [])]),
        space=space, objective=raw.get("objective", "val_loss"), sampler=raw.get("sampler") or {}, pruner=raw.get("pruner") or {},
        n_trials=int(raw.get("n_trials", 8)), timeout=float(raw.get("timeout") or 0), heartbeat_interval=int(raw.get("heartbeat_interval", 10)),
        grace_period=int(raw.get("grace_period", 30)), max_retry=int(raw.get("max_retry", 2)), enqueue=tuple(raw.get("enqueue") or ()),
        description=str(raw.get("description") or ""),
    )  # fmt: skip
    # every point of the space must make a valid experiment (unknown keys, impossible batch sizes)
    corners = {
        p.key: (
            p.choices[0] if p.kind == "categorical" else (int(p.low) if p.kind == "int" else p.low)
        )
        for p in space
    }
    sweep.experiment(corners, 0)
    for p in space:
        for c in p.choices:
            sweep.experiment({**corners, p.key: c}, 0)
    return sweep


def storage_url(sweep_name: str, runs_root: Path, storage: str | None) -> str:
    if storage:
        return storage
    path = runs_root / "sweeps" / sweep_name / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def _retry_callback():  # noqa: ANN202
    """Optuna >= 4.9 names it RetryHeartbeatStaleTrialCallback; older releases RetryFailedTrialCallback."""
    from optuna import storages

    return (
        getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
        or storages.RetryFailedTrialCallback
    )


def _serialise_sqlite(engine) -> None:  # noqa: ANN001
    """Every SQLite transaction takes the write lock when it begins (BEGIN IMMEDIATE).

    Python's sqlite3 starts a transaction only at the first write, so Optuna's read-then-write
    steps are not atomic across processes: two workers read the same enqueued (WAITING) trial,
    both mark it RUNNING and train it twice, and the slower one fails with "Cannot tell a
    COMPLETE trial". PostgreSQL and MySQL lock the row with SELECT ... FOR UPDATE; SQLite ignores
    that, so the transaction itself must hold the lock. The SQLAlchemy recipe for pysqlite.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:  # noqa: ANN001
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna created its tables predate the hooks


def make_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2
):  # noqa: ANN201
    """RDB storage with heartbeats: a dead worker's trial is failed after grace_period and retried."""
    import inspect
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    retry = _retry_callback()(max_retry=max_retry, inherit_intermediate_values=True)
    hook = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters
        else "failed_trial_callback"
    )
    kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period, hook: retry}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    for attempt in range(5):
        try:
            storage = RDBStorage(url, **kwargs)
            if url.startswith("sqlite"):
                _serialise_sqlite(storage.engine)
            return storage
        except Exception as e:  # bad URL, missing driver, unreachable server, schema race
            # Workers started together on an empty database race to create Optuna's tables; the
            # loser sees a unique-constraint violation and succeeds once the tables exist.
            if type(e).__name__ == "IntegrityError" and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise SmolError(
                f"cannot open Optuna storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0]}"
            ) from None


def _sampler(spec: dict):  # noqa: ANN202
    import optuna

    kind = spec.get("type", "tpe")
    if kind == "tpe":
        return optuna.samplers.TPESampler(
            seed=spec.get("seed", 0), n_startup_trials=spec.get("n_startup_trials", 4)
        )
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=spec.get("seed", 0))
    raise ConfigError(f"sampler {kind!r}: choose tpe or random")


def _pruner(spec: dict):  # noqa: ANN202
    import optuna

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
    raise ConfigError(f"pruner {kind!r}: choose median, successive_halving or none")


def open_study(sweep: Sweep, url: str):  # noqa: ANN201
    """Create the study, or load it to resume; enqueued points are added once, at creation."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(url, sweep.heartbeat_interval, sweep.grace_period, sweep.max_retry)
    try:
        optuna.load_study(study_name=sweep.name, storage=storage)
        created = False
    except KeyError:
        created = True
    study = optuna.create_study(
        study_name=sweep.name,
        storage=storage,
        direction="minimize",
        sampler=_sampler(sweep.sampler),
        pruner=_pruner(sweep.pruner),
        load_if_exists=True,
    )
    if created:
        for point in sweep.enqueue:
            study.enqueue_trial(point)
    return study


def _suggest(trial, p: Param) -> Any:  # noqa: ANN001
    if p.kind == "categorical":
        return trial.suggest_categorical(p.key, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, log=p.log)


def objective(sweep: Sweep, root: Path):  # noqa: ANN201
    """trial -> the objective of a training run; intermediate val loss feeds the pruner."""
    import warnings

    import optuna

    from smollm.train import train

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    def run(trial: optuna.Trial) -> float:
        params = {p.key: _suggest(trial, p) for p in sweep.space}
        frozen = trial.study.get_trials(deepcopy=False)[
            trial.number
        ]  # Optuna 5: system attrs live here
        origin = _retry_callback().retried_trial_number(frozen)
        number = (
            trial.number if origin is None else origin
        )  # a retry resumes the failed trial's run
        run_dir = root / f"trial-{number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker_pid", os.getpid())

        def report(step: int, loss: float) -> None:
            trial.report(loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (val loss {loss:.4f})")

        try:
            summary = train(
                sweep.experiment(params, number), run_dir, progress=False, on_eval=report
            )
        except optuna.TrialPruned as e:
            (run_dir / "summary.json").write_text(
                json.dumps({"status": "pruned", "reason": str(e), "params": params}, indent=2)
                + "\n"
            )
            raise
        value = summary[sweep.objective]
        if value is None or not math.isfinite(value):
            raise SmolError(f"trial {number}: objective {sweep.objective} is {value}")
        return value

    return run


def run_worker(
    sweep_path: str, overrides: list[str], runs_root: str, url: str, threads: int
) -> None:
    """One worker process: optimise until the study holds n_trials finished trials (or timeout)."""
    import optuna
    import torch
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from smollm.train import TrainingDiverged

    torch.set_num_threads(threads)
    sweep = load_sweep(sweep_path, overrides)
    study = open_study(sweep, url)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = MaxTrialsCallback(sweep.n_trials, states=finished)
    # Recorded as failed, and the study goes on. UpdateFinishedTrialError: this worker looked dead
    # (heartbeat past the grace period under load), another worker failed its trial and queued a
    # retry; this worker carries on with the next trial instead of exiting.
    catch = (
        TrainingDiverged,
        SmolError,
        torch.OutOfMemoryError,
        optuna.exceptions.UpdateFinishedTrialError,
    )
    start = time.monotonic()
    while sum(t.state in finished for t in study.get_trials(deepcopy=False)) < sweep.n_trials:
        left = sweep.timeout - (time.monotonic() - start) if sweep.timeout else None
        if left is not None and left <= 0:
            return
        try:
            study.optimize(
                objective(sweep, Path(runs_root) / "sweeps" / sweep.name),
                timeout=left,
                catch=catch,
                callbacks=[done],
            )
        except ValueError as e:  # Optuna's tell on a trial another worker already finished
            if not str(e).startswith("Cannot tell a"):
                raise
            msg = f"sweep worker {os.getpid()}: {e} (another worker took it over); going on"
            print(msg, file=sys.stderr)


def run_sweep(
    sweep_path: str, overrides: list[str], runs_root: Path, storage: str | None, workers: int
) -> str:
    """Run `workers` worker processes on one storage (worker i on GPU i mod n); returns the URL."""
    sweep = load_sweep(sweep_path, overrides)  # errors before any process starts
    url = storage_url(sweep.name, runs_root, storage)
    open_study(sweep, url)  # create the study once, so workers do not race to create it
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        run_worker(sweep_path, overrides, str(runs_root), url, threads)
        return url
    from smollm.runtime import start_workers

    procs = start_workers(  # worker i on GPU i mod n
        run_worker, [(sweep_path, overrides, str(runs_root), url, threads)] * workers
    )
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise SmolError(
            f"{len(bad)} of {workers} sweep workers exited with an error (exit codes {bad})"
        )
    return url


def best_params(name: str, url: str) -> dict[str, Any]:
    """Best parameters of a finished study, as dotted experiment keys."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=url)
        return dict(study.best_params)
    except KeyError:
        raise SmolError(f"no study {name!r} in {url}") from None
    except ValueError:
        raise SmolError(f"study {name!r} has no completed trial yet") from None


def _provenance(study, url: str, name: str) -> str:  # noqa: ANN001
    """Where and with which code the trials ran (from their run directories)."""
    from smollm.tracking import code_versions, machine

    versions = code_versions(Path(t.user_attrs.get("run_dir", "")) for t in study.trials)
    m = machine()
    return (
        f"**Provenance.** Optuna study `{name}` in `{url}`, trials run by `smol sweep` on {m['device']} "
        f"({m['threads']} threads, torch {m['torch']}), code at git {versions}; "
        f"rebuilt by `smol sweep show {name}`."
    )


def write_sweep_results(name: str, url: str, out_root: Path) -> Path:
    """results/sweeps/<name>/: summary.md, trials.csv, importances and Optuna's plots."""
    import csv
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as vis
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise SmolError(f"no study {name!r} in {url}") from None
    out = out_root / "sweeps" / name
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for t in study.trials for k in t.params})
    rows = [
        {"trial": t.number, "state": t.state.name, "value": t.value, **{k: t.params.get(k) for k in keys},
         "last_step": t.last_step, "run_dir": t.user_attrs.get("run_dir", "")}
        for t in study.trials
    ]  # fmt: skip
    with open(out / "trials.csv", "w", newline="") as fh:
        writer = csv.DictWriter(
            fh,
            fieldnames=["trial", "state", "value", *keys, "last_step", "run_dir"],
            lineterminator="\n",
        )
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    lines = [f"# Sweep `{name}`", "", _provenance(study, url, name), ""]
    counts = {s.name: sum(t.state == s for t in study.trials) for s in TrialState}
    lines.append("Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v) + ".")
    if complete:
        best = study.best_trial
        lines += [
            "",
            f"**Best** (trial {best.number}, objective {best.value:.4f}): "
            + ", ".join(f"`{k}={v}`" for k, v in best.params.items()),
        ]
    plots = {"optimization_history.png": vis.plot_optimization_history, "slice.png": vis.plot_slice}
    if len(keys) >= 2:
        plots["contour.png"] = vis.plot_contour
    if len(complete) >= 2 and len(keys) >= 2:
        importances = optuna.importance.get_param_importances(study)
        lines += [
            "",
            "| parameter | importance (fANOVA) |",
            "|---|---:|",
            *[f"| {k} | {v:.3f} |" for k, v in importances.items()],
        ]
        plots["importances.png"] = vis.plot_param_importances
    lines += [
        "",
        "| trial | state | objective | " + " | ".join(keys) + " |",
        "|---|---|---:|" + "---:|" * len(keys),
    ]
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else "—"
        lines.append(
            f"| {r['trial']} | {r['state'].lower()} | {value} | "
            + " | ".join(str(r[k]) for k in keys)
            + " |"
        )
    if complete:
        for filename, plot in plots.items():
            plot(study)
            plt.gcf().set_size_inches(8, 5)
            plt.savefig(out / filename, dpi=100, bbox_inches="tight", metadata={"Software": None})
            plt.close("all")
            lines += ["", f"![{filename}]({filename})"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return out
