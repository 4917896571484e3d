import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from smollm.config import ConfigError
from smollm.results import write_sweep_results
from smollm.sweep import load_sweep, run_sweep, storage_url

from .conftest import smol

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "sweeps" / "smoke.yaml"


def study(tmp_path, name="smoke"):
    return optuna.load_study(study_name=name, storage=storage_url(name, tmp_path / "runs", None))


def test_smoke_sweep_prunes_a_bad_trial_and_writes_results(tmp_path):
    proc = smol(
        "sweep", "run", str(SMOKE), "--runs-dir", "runs", "--results-dir", "results", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = study(tmp_path)
    states = [t.state for t in s.trials]
    assert states.count(TrialState.PRUNED) >= 1 and states.count(TrialState.COMPLETE) >= 2
    pruned = next(t for t in s.trials if t.state == TrialState.PRUNED)
    assert pruned.params["train.lr"] == pytest.approx(1e-4)  # the enqueued bad learning rate
    assert (
        tmp_path / "runs" / "sweeps" / "smoke" / f"trial-{pruned.number:04d}" / "summary.json"
    ).is_file()
    out = tmp_path / "results" / "sweeps" / "smoke"
    for name in (
        "summary.md",
        "trials.csv",
        "optimization_history.png",
        "slice.png",
        "contour.png",
    ):
        assert (out / name).is_file(), name
    assert "**Best**" in (out / "summary.md").read_text()
    again = smol(
        "sweep", "run", str(SMOKE), "--runs-dir", "runs", "--results-dir", "results", cwd=tmp_path
    )  # resume: nothing left
    assert again.returncode == 0 and len(study(tmp_path).trials) == len(s.trials)
    show = smol(
        "sweep", "show", "smoke", "--runs-dir", "runs", "--results-dir", "results", cwd=tmp_path
    )
    assert show.returncode == 0 and "Best" in show.stdout
    assert "sweeps/smoke" in (tmp_path / "results" / "README.md").read_text()


def kill_once_saved(args: list[str], cwd: Path, trial: str) -> None:
    """Start a sweep worker and SIGKILL it once a trial matching `trial` has a checkpoint."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while (
        not list((cwd / "runs" / "sweeps" / "smoke").glob(f"{trial}/checkpoints/*.pt"))
        and time.time() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(tmp_path):
    fast = (
        tmp_path / "smoke.yaml"
    )  # a short grace period, so the dead worker's trial is found quickly
    fast.write_text(
        SMOKE.read_text().replace(
            "heartbeat_interval: 2\ngrace_period: 20", "heartbeat_interval: 1\ngrace_period: 3"
        )
    )
    args = [
        sys.executable,
        "-m",
        "smollm.cli",
        "sweep",
        "run",
        str(fast),
        "--runs-dir",
        "runs",
        "train.max_steps=40",
        "train.eval_every=20",
    ]
    kill_once_saved(args, tmp_path, "trial-*")
    completed_before = [t.number for t in study(tmp_path).trials if t.state == TrialState.COMPLETE]
    time.sleep(4)  # past the grace period: the dead worker's heartbeat is stale
    resumed = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = study(tmp_path).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number)
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert (
        retry.user_attrs["run_dir"] == failed[0].user_attrs["run_dir"]
    )  # resumed the same run dir
    assert all(study(tmp_path).trials[n].state == TrialState.COMPLETE for n in completed_before)


def test_two_workers_share_one_sqlite_study(tmp_path):
    url = run_sweep(str(SMOKE), [], tmp_path / "runs", None, workers=2)
    s = optuna.load_study(study_name="smoke", storage=url)
    done = [t for t in s.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) >= 4
    assert len({t.user_attrs["worker_pid"] for t in s.trials}) == 2
    assert len({t.user_attrs["run_dir"] for t in s.trials}) == len(s.trials)


def test_diverging_trial_is_failed_and_the_study_goes_on(tmp_path):
    path = tmp_path / "div.yaml"
    text = SMOKE.read_text().replace(
        "  - {train.lr: 0.01, train.batch_size: 4}\n",
        "  - {train.lr: 0.01, train.batch_size: 4, model.init_std: 1.0e+30}\n",
        1,
    )
    text = text.replace(
        "space:\n", "space:\n  model.init_std: {type: categorical, choices: [0.02, 1.0e+30]}\n"
    )
    path.write_text(text)
    run_sweep(str(path), [], tmp_path / "runs", None, workers=1)
    s = study(tmp_path)
    failed = [t for t in s.trials if t.state == TrialState.FAIL]
    assert failed and failed[0].params["model.init_std"] == 1e30
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in s.trials) >= 4
    write_sweep_results(
        "smoke", storage_url("smoke", tmp_path / "runs", None), tmp_path / "results"
    )


@pytest.mark.parametrize(
    "space,match",
    [
        ("  train.lr: {type: float, low: 0.1, high: 0.01}", "need low < high"),
        ("  train.lr: {type: float, low: 0, high: 0.1, log: true}", "low > 0 with log"),
        ("  train.lr: {type: normal, low: 0, high: 1}", "type: float|int|categorical"),
        ("  train.lrr: {type: float, low: 0.001, high: 0.1}", "unknown config key 'train.lrr'"),
        ("  train.batch_size: {type: categorical, choices: []}", "non-empty 'choices'"),
        ("  train.batch_size: {type: categorical, choices: [0]}", "train.batch_size=0: must be in"),
    ],
)
def test_bad_search_space_errors_clearly(tmp_path, space, match):
    text = SMOKE.read_text()
    head, _, tail = text.partition("space:\n")
    tail = tail.split("\n", 2)[2]  # drop the two lines of the shipped space
    path = tmp_path / "s.yaml"
    path.write_text(f"{head}space:\n{space}\n{tail}")
    with pytest.raises(ConfigError, match=match):
        load_sweep(path)
    proc = smol("sweep", "run", str(path), "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_shipped_sweep_files_are_valid():
    for name in ("smoke", "default", "smollm2-135m"):
        assert load_sweep(ROOT / "sweeps" / f"{name}.yaml").space
    v1 = load_sweep(
        ROOT / "sweeps" / "default.yaml",
        ["model.preset=v1", "model.n_kv_heads=4"],
    )
    assert v1.experiment({"train.lr": 1e-3, "train.batch_size": 8}, 0).model.norm == "layernorm"


def test_ablation_takes_lr_from_a_finished_study(tmp_path, monkeypatch):
    from smollm.ablation import load_ablation

    run_sweep(str(SMOKE), [], tmp_path / "runs", None, workers=1)
    best = study(tmp_path).best_params
    abl = tmp_path / "a.yaml"
    abl.write_text(
        (ROOT / "experiments" / "smoke.yaml").read_text()
        + "from_sweep: {name: smoke, runs_dir: runs}\n"
    )
    monkeypatch.chdir(tmp_path)
    ablation = load_ablation(abl)
    exp = ablation.experiment(ablation.variants[0], 0)
    assert (
        exp.train.lr == pytest.approx(best["train.lr"])
        and exp.train.batch_size == best["train.batch_size"]
    )


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port (as the postgres user when root)."""
    import shutil
    import socket
    import tempfile

    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    assert bins, "PostgreSQL is not installed: run `make test` (scripts/setup-test-deps.sh)"
    bindir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="smollm-pg-", dir="/tmp"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(data, "postgres")
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_pg, *cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{Path(cmd[0]).name} failed: {done.stderr.strip()}"

    try:  # a cluster that cannot start leaves no directory behind
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(root / "log")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", log, "-w", "start")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_commands_share_a_study_on_postgresql(tmp_path, postgres):
    """As on two machines: the same command started twice against one database URL."""
    cmd = [
        sys.executable,
        "-m",
        "smollm.cli",
        "sweep",
        "run",
        str(SMOKE),
        "--storage",
        postgres,
        "--runs-dir",
        "runs",
    ]
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    s = optuna.load_study(study_name="smoke", storage=postgres)
    done = [t for t in s.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) >= 4
    assert len({t.user_attrs["worker_pid"] for t in s.trials}) == 2
    bad = smol(
        "sweep",
        "run",
        str(SMOKE),
        "--storage",
        "postgresql+psycopg2://postgres@127.0.0.1:1/none",
        cwd=tmp_path,
    )
    assert (
        bad.returncode == 2
        and "cannot open Optuna storage" in bad.stderr
        and "Traceback" not in bad.stderr
    )


def _ask_many(url: str, n: int, out) -> None:
    from smollm.sweep import make_storage

    s = optuna.load_study(study_name="race", storage=make_storage(url))
    out.put([s.ask().number for _ in range(n)])


def test_enqueued_trials_are_taken_once_by_concurrent_sqlite_workers(tmp_path):
    # Python's sqlite3 begins a transaction only at the first write, so without BEGIN IMMEDIATE
    # two workers read the same WAITING trial and both run it (seen 5-7 times in 40 here)
    import multiprocessing as mp
    import warnings

    from smollm.sweep import make_storage

    url = f"sqlite:///{tmp_path / 'race.db'}"
    s = optuna.create_study(study_name="race", storage=make_storage(url))
    for i in range(40):
        s.enqueue_trial({"x": float(i)})
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ask_many, args=(url, 10, out)) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in procs:
            p.start()
        numbers = sorted(n for _ in procs for n in out.get(timeout=120))
    for p in procs:
        p.join()
    assert numbers == list(range(40))  # each enqueued trial once, and no new ones


def test_a_trial_orphaned_near_the_end_of_a_study_is_retried(tmp_path):
    """Faults II #4: a worker killed while the study still reached n_trials (within the grace
    period) left its trial RUNNING for good, and its enqueued point was never evaluated."""
    slow = tmp_path / "smoke.yaml"  # a grace period far longer than the test: no heartbeat help
    slow.write_text(SMOKE.read_text().replace("grace_period: 20", "grace_period: 600"))
    args = [sys.executable, "-m", "smollm.cli", "sweep", "run", str(slow), "--runs-dir", "runs",
            "train.max_steps=16", "train.eval_every=4", "train.ckpt_every=4"]  # fmt: skip
    kill_once_saved(args, tmp_path, "trial-0000")  # trial 0 (an enqueued point) left RUNNING
    assert [t.state for t in study(tmp_path).trials] == [TrialState.RUNNING, TrialState.WAITING,
                                                         TrialState.WAITING]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study(tmp_path).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[0].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.params == trials[0].params == {"train.lr": 0.01, "train.batch_size": 4}
    summary = json.loads(
        (tmp_path / "runs" / "sweeps" / "smoke" / "trial-0000" / "summary.json").read_text()
    )
    assert summary["status"] in ("finished", "pruned")


def test_a_study_without_trials_or_params_writes_a_well_formed_summary(tmp_path):
    """An empty study's summary said "Trials: ." above a table whose header had a column more
    than its alignment row."""
    import optuna

    from smollm.results import write_sweep_results

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="empty", storage=url)
    bare = optuna.create_study(study_name="bare", storage=url)
    bare.tell(bare.ask(), 1.5)  # a trial with no parameters
    empty = (write_sweep_results("empty", url, tmp_path / "results") / "summary.md").read_text()
    assert "Trials: none yet (`smol sweep run empty`)." in empty and "| trial |" not in empty
    lines = (write_sweep_results("bare", url, tmp_path / "results") / "summary.md").read_text()
    table = [line for line in lines.splitlines() if line.startswith("|")]
    assert table == ["| trial | state | objective |", "|---|---|---:|", "| 0 | complete | 1.5000 |"]
