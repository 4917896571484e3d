"""Running a sweep: the study, the objective (a training run per trial) and the worker processes."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from smollm.config import Preempted, SmolError
from smollm.rundir import SweepDir
from smollm.sweep.spec import Param, Sweep, load_sweep, make_pruner, make_sampler
from smollm.sweep.storage import make_storage, reap_orphans, retry_callback, storage_url
from smollm.tracking import wandb_mode


def open_study(sweep: Sweep, url: str):
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
        sampler=make_sampler(sweep.sampler),
        pruner=make_pruner(sweep.pruner),
        load_if_exists=True,
    )
    if created:
        for point in sweep.enqueue:
            study.enqueue_trial(point)
    return study


def _suggest(trial, p: Param) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.key, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, log=p.log)


def objective(sweep: Sweep, runs_root: Path):
    """trial -> the objective of a training run; intermediate val loss feeds the pruner."""
    import warnings

    import optuna

    from smollm.train import train

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    trials = SweepDir(runs_root, sweep.name)

    def run(trial: optuna.Trial) -> float:
        params = {p.key: _suggest(trial, p) for p in sweep.space}
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]  # Optuna 5: system attrs
        origin = retry_callback().retried_trial_number(frozen)
        number = trial.number if origin is None else origin  # a retry resumes the failed run
        run = trials.trial(number)
        shown = run if not sweep.seeds else trials.trial(number, sweep.seeds[0])
        trial.set_user_attr("run_dir", str(shown.path))
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("worker_host", socket.gethostname())  # with the pid: is it alive?

        def report(step: int, loss: float) -> None:
            trial.report(loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (val loss {loss:.4f})")

        values = []
        for k, seed in enumerate(sweep.seeds or (None,)):  # the pruner watches the first seed
            seed_run = run if seed is None else trials.trial(number, seed)
            try:
                summary = train(sweep.experiment(params, number, seed), seed_run.path, progress=False,
                                on_eval=report if k == 0 else None)  # fmt: skip
            except optuna.TrialPruned as e:
                seed_run.write_summary("pruned", reason=str(e), params=params)
                raise
            except Preempted:  # its run is saved: a retry (same params) resumes it, then stop
                retry_callback()(max_retry=sweep.max_retry)(trial.study, frozen)
                raise
            values.append(summary[sweep.objective])
        if any(v is None or not math.isfinite(v) for v in values):
            raise SmolError(f"trial {number}: objective {sweep.objective} is {values}")
        return sum(values) / len(values)

    return run


def run_worker(
    sweep_path: str, overrides: list[str], runs_root: str, url: str, threads: int
) -> None:
    """One worker process: optimise until the study holds n_trials finished trials (or timeout)."""
    import torch

    torch.set_num_threads(threads)
    optimize(load_sweep(sweep_path, overrides), url, Path(runs_root))


def optimize(sweep: Sweep, url: str, runs_root: Path) -> None:
    """Run trials of `sweep` in this process until the study holds n_trials finished ones."""
    import optuna
    import torch
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    study = open_study(sweep, url)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = MaxTrialsCallback(sweep.n_trials, states=finished)
    # Recorded as failed, and the study goes on (TrainingDiverged is a SmolError).
    # UpdateFinishedTrialError: this worker looked dead (heartbeat past the grace period under
    # load), another worker failed its trial and queued a retry; this one goes on with the next.
    catch = (SmolError, torch.OutOfMemoryError, optuna.exceptions.UpdateFinishedTrialError)
    start = time.monotonic()
    reap_orphans(study)  # a worker that starts retries the trials of dead ones
    while True:
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)  # enqueued points, retries
        if sum(t.state in finished for t in trials) >= sweep.n_trials and not waiting:
            if not reap_orphans(study):  # and so does one that finishes
                return
            continue
        left = sweep.timeout - (time.monotonic() - start) if sweep.timeout else None
        if left is not None and left <= 0:
            return
        try:
            study.optimize(objective(sweep, runs_root), timeout=left, catch=catch, callbacks=[done])
        except ValueError as e:  # Optuna's tell on a trial another worker already finished
            if not str(e).startswith("Cannot tell a"):
                raise
            msg = f"sweep worker {os.getpid()}: {e} (another worker took it over); going on"
            print(msg, file=sys.stderr)


def run_sweep(
    sweep_path: str, overrides: list[str], runs_root: Path, storage: str | None, workers: int,
    launcher: str = "local", wait: bool = True,
) -> str:  # fmt: skip
    """Run `workers` worker processes on one storage (worker i on GPU i mod n), here or as one
    SLURM job array; returns the URL."""
    sweep = load_sweep(sweep_path, overrides)  # errors before any process starts
    wandb_mode(sweep.experiment({}, 0).tracking.mode)  # online without a W&B key, too
    url = storage_url(sweep.name, runs_root, storage, create=True)
    open_study(sweep, url)  # create the study once, so workers do not race to create it
    if launcher == "slurm":
        _workers_on_slurm(sweep, sweep_path, overrides, runs_root, url, workers, wait)
        return url
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        run_worker(sweep_path, overrides, str(runs_root), url, threads)
        return url
    from smollm.runtime import start_workers

    procs = start_workers(
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


def _workers_on_slurm(sweep: Sweep, sweep_path: str, overrides: list[str], runs_root: Path,
                      url: str, workers: int, wait: bool) -> None:  # fmt: skip
    """`workers` sweep workers as one SLURM job array on the study's storage; a worker whose
    job is still queued or running is not submitted again."""
    from functools import partial

    from smollm.launch import Task, queue_states, recorded_job, submit, wait_for
    from smollm.rundir import RunDir

    home = SweepDir(runs_root, sweep.name)
    dirs = [RunDir(home.path / "workers" / f"worker-{i}") for i in range(workers)]
    live = queue_states([j for j in map(recorded_job, dirs) if j])
    work = partial(run_worker, str(Path(sweep_path).resolve()), list(overrides),
                   str(Path(runs_root).resolve()), url, sweep.launcher.cpus_per_run)  # fmt: skip
    tasks = [Task(d.name, d, work) for d in dirs if recorded_job(d) not in live]
    submitted = submit(tasks, home.path / "slurm", sweep.launcher, sweep.name)
    print(f"[slurm] {len(submitted)} sweep workers submitted as one job array, "
          f"{len(live)} already queued", file=sys.stderr, flush=True)  # fmt: skip
    if wait:
        wait_for(submitted + list(live), progress=True)
