"""Optuna storage: SQLite by default, any SQLAlchemy URL (PostgreSQL, MySQL) to share a study.

Every compatibility workaround with Optuna, SQLite and PostgreSQL lives here, each with the
upstream issue it works around; an unreachable or misspelt storage is one line, for every command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from smollm.config import SmolError
from smollm.rundir import SweepDir


def storage_url(sweep_name: str, runs_root: Path, storage: str | None, create: bool = False) -> str:
    """The study's storage: `storage` as given (normalised), else runs/sweeps/<name>/study.db,
    its folder made when `create` (a sweep that runs; one that is only read makes nothing)."""
    if storage:
        return normalise_url(storage)
    path = SweepDir(runs_root, sweep_name).study_db
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def normalise_url(url: str) -> str:
    """`postgresql://` names no driver, and SQLAlchemy 2.1 picks psycopg 3 for it; use whichever
    PostgreSQL driver is installed (psycopg2-binary is the one smollm's extras install)."""
    import importlib.util

    if not url.startswith(("postgresql://", "postgres://")):
        return url
    rest = url.split("://", 1)[1]
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise SmolError(
        "a PostgreSQL storage needs a driver: pip install psycopg2-binary (or psycopg[binary])"
    )


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URL (None for any other storage, or in memory)."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def display_url(url: str) -> str:
    """A storage URL fit for a committed table: no password, and a SQLite file under the current
    directory named relative to it (never a machine's absolute path)."""
    import re

    url = re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        try:
            return f"sqlite:///{path.resolve().relative_to(Path.cwd().resolve())}"
        except ValueError:
            return f"sqlite:///.../{path.parent.name}/{path.name}"
    return url


def retry_callback():
    """Optuna >= 4.9 names it RetryHeartbeatStaleTrialCallback (and RDBStorage's hook
    heartbeat_stale_trial_callback); older releases RetryFailedTrialCallback / failed_trial_callback."""
    from optuna import storages

    return (
        getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
        or storages.RetryFailedTrialCallback
    )


def reap_orphans(study) -> int:
    """Fail, and so retry, the RUNNING trials that no live worker owns: those whose heartbeat is
    stale (any machine), and at once those whose worker process on this machine is gone (its
    trial would otherwise wait out the grace period, or for ever once the study has its
    n_trials). Called whenever a worker starts or finishes; the number failed."""
    import copy
    import socket

    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)
    storage, host, reaped = study._storage, socket.gethostname(), 0
    callback = (
        getattr(storage, "get_heartbeat_stale_trial_callback", None)
        or storage.get_failed_trial_callback
    )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("worker_pid")
        if t.user_attrs.get("worker_host") != host or pid is None or _alive(pid):
            continue
        try:
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        reaped += 1
        if callback() is not None:
            callback()(study, copy.deepcopy(storage.get_trial(t._trial_id)))
    return reaped


def _alive(pid: int) -> bool:
    """Whether a process of this machine with that id exists."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: alive
    return True


def _serialise_sqlite(engine) -> None:
    """Every SQLite transaction takes the write lock when it begins (BEGIN IMMEDIATE).

    Python's sqlite3 starts a transaction only at the first write, so Optuna's read-then-write
    steps are not atomic across processes: two workers read the same enqueued (WAITING) trial,
    both mark it RUNNING and train it twice, and the slower one fails with "Cannot tell a
    COMPLETE trial". PostgreSQL and MySQL lock the row with SELECT ... FOR UPDATE; SQLite ignores
    that, so the transaction itself must hold the lock. The SQLAlchemy recipe for pysqlite.
    Works around optuna/optuna#4621 (enqueued trials taken twice by concurrent workers).
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna created its tables predate the hooks


def make_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2
):
    """RDB storage with heartbeats: a dead worker's trial is failed after grace_period and retried."""
    import inspect
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    retry = retry_callback()(max_retry=max_retry, inherit_intermediate_values=True)
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
            # loser sees a unique-constraint violation and succeeds once the tables exist
            # (optuna/optuna#1092, closed with "create the study first": impossible across machines).
            if type(e).__name__ == "IntegrityError" and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise SmolError(
                f"cannot open Optuna storage {display_url(url)!r}: {type(e).__name__}: "
                f"{(str(e).splitlines() or [''])[0]}"
            ) from None


def load_study(name: str, url: str):
    """An existing study; a missing one or an unreachable storage is one line."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = sqlite_file(url)
    if db is not None and not db.is_file():  # SQLite would create an empty database to read
        raise SmolError(f"no study {name!r}: {display_url(url)} does not exist")
    try:
        return optuna.load_study(study_name=name, storage=make_storage(url))
    except KeyError:
        raise SmolError(f"no study {name!r} in {display_url(url)}") from None


def best_params(name: str, url: str) -> dict[str, Any]:
    """Best parameters of a study, by dotted experiment key (typed as sampled)."""
    study = load_study(name, url)
    try:
        return dict(study.best_params)
    except ValueError:
        raise SmolError(f"study {name!r} has no completed trial yet") from None
