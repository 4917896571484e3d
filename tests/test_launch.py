"""`--launcher slurm` against a real SLURM cluster on this machine (Debian's slurmctld, slurmd and
munge, started here without systemd, stopped afterwards; `make test` installs them)."""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import smol

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"

# one cluster for the module: under xdist its tests share one worker (xdist_units.ONE_WORKER)
pytestmark = pytest.mark.slow

CONF = """ClusterName=smollm-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
# AuthInfo=cred_expire=10: a requeued job may start again 11 s later (the default waits 121 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_up() -> bool:
    enc = subprocess.run(["munge", "-n"], capture_output=True)
    return enc.returncode == 0 and subprocess.run(["unmunge"], input=enc.stdout,
                                                  capture_output=True).returncode == 0  # fmt: skip


@pytest.fixture(scope="module")
def slurm():
    """A one-node cluster (this machine, every CPU) whose config SLURM_CONF names; yields env."""
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None]
    assert not missing, f"{missing} not installed: run `make test` (scripts/setup-test-deps.sh)"
    assert os.geteuid() == 0, "the test cluster's daemons run as root"
    # One test cluster on this machine at a time, whichever pytest started it: munged is shared,
    # and whoever started it stops it at the end (a second cluster would lose its munged then).
    lock = open(Path(tempfile.gettempdir()) / "smollm-slurm-tests.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the fixture's process ends or below
    own_munge = not _munge_up()
    if own_munge:  # as root with --force: a log or socket left by another owner is fine
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        started = subprocess.run(["munged", "--force"], capture_output=True, text=True)
        assert started.returncode == 0, f"munged: {started.stderr.strip()}"
        assert _munge_up(), "munged does not answer"
    root = Path(tempfile.mkdtemp(prefix="smollm-slurm-", dir="/tmp"))
    for d in ("state", "spool"):
        (root / d).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(root=root, ctld_port=_free_port(), d_port=_free_port(),
                                cpus=os.cpu_count() or 2))  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run(["slurmctld"], env=env, check=True, capture_output=True, timeout=60)
        subprocess.run(["slurmd", "-N", "localhost"], env=env, check=True, capture_output=True,
                       timeout=60)  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                   text=True).stdout.strip()  # fmt: skip
            if state == "idle":
                break
            time.sleep(0.5)
        assert state == "idle", (
            f"the test node is {state!r}: {(root / 'slurmd.log').read_text()[-2000:]}"
        )
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            pid = root / pid_file
            if pid.is_file():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid.read_text()), signal.SIGTERM)
        time.sleep(1)
        shutil.rmtree(root, ignore_errors=True)
        if own_munge:
            subprocess.run(["munged", "--stop"], capture_output=True)
        lock.close()


def one_run(tmp_path: Path) -> Path:
    """The smoke ablation cut to one run (full, seed 0), named `one`."""
    one = tmp_path / "one.yaml"
    one.write_text(SMOKE.read_text().replace("name: smoke", "name: one").replace("  - v1\n", "")
                   .replace("seeds: [0, 1]", "seeds: [0]"))  # fmt: skip
    return one


def deterministic(path: Path) -> str:
    """summary.csv without the timing column (tokens/s differs between any two runs)."""
    rows = path.read_text().splitlines()
    col = rows[0].split(",").index("tokens_per_s")
    return "\n".join(",".join(c for i, c in enumerate(r.split(",")) if i != col) for r in rows)


def test_an_ablation_on_slurm_equals_the_local_one_and_a_rerun_submits_nothing(tmp_path, slurm):
    """Every run an array task, the same tables as --launcher local, the logs beside each run."""
    local = smol("run", "ablation", "smoke", "--runs-dir", "local", "--results-dir", "local-results",
                 "--quiet", cwd=tmp_path)  # fmt: skip
    assert local.returncode == 0, local.stderr[-2000:]
    cmd = ["run", "ablation", "smoke", "--launcher", "slurm", "--quiet"]
    first = smol(*cmd, cwd=tmp_path, env=slurm)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[slurm] 4 runs submitted as one job array" in first.stderr
    assert deterministic(tmp_path / "results" / "smoke" / "summary.csv") == deterministic(
        tmp_path / "local-results" / "smoke" / "summary.csv"
    )
    ids = set()
    for run in ("full-s0", "full-s1", "v1-s0", "v1-s1"):
        slurm_dir = tmp_path / "runs" / "smoke" / run / "slurm"
        ids.add(json.loads((slurm_dir / "job.json").read_text())["job_id"].split("_")[0])
        assert (slurm_dir / "stdout").resolve().is_file() and (slurm_dir / "stderr").exists()
    assert len(ids) == 1  # one array
    again = smol(*cmd, cwd=tmp_path, env=slurm)
    assert again.returncode == 0 and "[slurm] 0 runs submitted" in again.stderr, again.stderr
    assert "0 already queued, 4 finished" in again.stderr


SLOW_STEPS = """
try:
    import time

    import torch.nn.utils

    _clip = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(*args, **kwargs):  # each step takes 0.2 s more: a signal lands mid-run
        time.sleep(0.2)
        return _clip(*args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = clip_grad_norm_
except ImportError:  # another python on the way (SLURM's own tools)
    pass
"""


# USR2 only: TERM takes the same path (PreemptionFlag, then the requeue), and both signals are
# checked against a local run in test_faults; a second SLURM case cost a minute of the suite.
@pytest.mark.parametrize("sig", ["USR2"])
def test_a_preempted_array_task_is_requeued_and_resumes_exactly(tmp_path, slurm, sig):
    """`scancel --signal=USR2` (submitit's preemption notice) to a running task: it saves at a
    step boundary, requeues itself, resumes, and ends as an uninterrupted run."""
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_STEPS)
    one = one_run(tmp_path)
    args = ["run", "ablation", str(one), "train.max_steps=30", "--quiet"]
    env = {
        **slurm,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "slow"), os.environ.get("PYTHONPATH", "")]),
    }
    sent = smol(*args, "--launcher", "slurm", "--no-wait", cwd=tmp_path, env=env)
    assert sent.returncode == 0 and "full-s0                 submitted" in sent.stdout, sent.stderr
    run = tmp_path / "runs" / "one" / "full-s0"
    deadline = time.time() + 120
    while not list(run.glob("checkpoints/*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    job = json.loads((run / "slurm" / "job.json").read_text())["job_id"]
    subprocess.run(["scancel", f"--signal={sig}", job], env=slurm, check=True)
    deadline = time.time() + 60
    while time.time() < deadline and "preempted" not in (run / "summary.json").read_text():
        time.sleep(0.1)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and 0 < summary["step"] < 30, summary
    waited = smol(*args, "--launcher", "slurm", cwd=tmp_path, env=env)  # the same job, requeued
    assert waited.returncode == 0, waited.stderr[-3000:]
    assert "0 runs submitted as one job array, 1 already queued" in waited.stderr
    assert f"requeued SLURM job {job}" in (run / "slurm" / "stderr").read_text()
    local = smol(*args, "--runs-dir", "local", "--results-dir", "local-results", cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    ref = tmp_path / "local" / "one" / "full-s0"
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert (run / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def test_bad_launcher_input_is_one_line(tmp_path, slurm):
    cases = [
        (["launcher.gpus=1"], slurm, "unknown launcher key(s) gpus; valid: partition"),
        (["launcher.partition=nosuch"], slurm, "sbatch refused the array: sbatch: error: invalid partition"),
        ([], {**slurm, "PATH": str(tmp_path)}, "`sbatch` is not on PATH"),
    ]  # fmt: skip
    for extra, env, message in cases:
        proc = smol("run", "ablation", "smoke", *extra, "--launcher", "slurm", "--quiet",
                    cwd=tmp_path, env=env)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = smol("run", "ablation", "smoke", "--launcher", "pbs", cwd=tmp_path)
    assert proc.returncode == 2 and "--launcher 'pbs': choose local or slurm" in proc.stderr


def test_a_sweep_as_a_two_task_array_survives_a_killed_worker(tmp_path, slurm):
    """Two workers as one array on the study's storage; one is SIGKILLed mid-trial: its trial is
    failed and retried (with its params), and no completed trial is lost."""
    import optuna
    from optuna.trial import TrialState

    from smollm.sweep import load_study, storage_url

    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_STEPS)
    env = {
        **slurm,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "slow"), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["sweep", "run", "smoke", "train.max_steps=16", "train.eval_every=4", "train.ckpt_every=4",
            "--workers", "2", "--launcher", "slurm"]  # fmt: skip
    sent = smol(*args, "--no-wait", cwd=tmp_path, env=env)
    assert sent.returncode == 0 and "2 sweep workers submitted as one job array" in sent.stderr
    url = storage_url("smoke", tmp_path / "runs", None)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    deadline, victim = time.time() + 120, None
    while victim is None and time.time() < deadline:
        for t in load_study("smoke", url).trials:
            run = Path(t.user_attrs.get("run_dir", "/nonexistent"))
            if t.state == TrialState.RUNNING and list(run.glob("checkpoints/*.pt")):
                victim = t
                os.kill(t.user_attrs["worker_pid"], signal.SIGSTOP)  # mid-trial until killed
                break
        time.sleep(0.1)
    assert victim is not None, "no trial reached a checkpoint"
    done_before = [
        t.number for t in load_study("smoke", url).trials if t.state == TrialState.COMPLETE
    ]
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    waited = smol(*args, cwd=tmp_path, env=env)  # waits for the live worker, then the tables
    assert waited.returncode == 0, waited.stderr[-3000:]
    trials = load_study("smoke", url).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[victim.number].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and retry.params == victim.params
    assert all(trials[n].state == TrialState.COMPLETE for n in done_before)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) >= 4
    assert (tmp_path / "results" / "sweeps" / "smoke" / "summary.md").is_file()


TINY = [
    "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.intermediate_size=128",
    "model.max_seq_len=64", "data.seq_len=32", "data.tokenizer=bpe-512", "data.val_fraction=0.1",
    "train.batch_size=8", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=5",
    "train.max_steps=6", "train.eval_every=100", "train.ckpt_every=100", "train.log_every=1",
    "train.eval_blocks=8", "train.sample_tokens=8", "tracking.mode=disabled",
]  # fmt: skip


def test_one_run_across_two_srun_tasks_equals_one_process(tmp_path, slurm):
    """`srun -n2` (as on two nodes: one process per task, gloo): the rendezvous comes from SLURM's
    variables, and the losses and final weights equal the one-process run's."""
    import sys

    import torch

    from smollm.checkpoint import load_latest
    from smollm.rundir import RunDir

    from .conftest import make_docs, write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(400))
    args = [*TINY, f"data.corpus={corpus}"]
    one = smol("train", *args, "--run-dir", str(tmp_path / "one"), "--quiet", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        ["srun", "-n2", "--cpus-per-task=1", sys.executable, "-m", "smollm.cli", "train", *args,
         "--run-dir", str(tmp_path / "two"), "--quiet"],
        cwd=tmp_path, env={**slurm, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (load_latest(RunDir(tmp_path / r))[0]["model"] for r in ("one", "two"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)

    def losses(run: str) -> list[float]:
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["train/loss"] for r in rows if "train/loss" in r]

    assert losses("one") == pytest.approx(losses("two"), rel=1e-5)


def test_a_run_of_two_tasks_per_node_trains_as_one_ddp_run(tmp_path, slurm):
    """launcher.tasks_per_node=2: each array task is a 2-rank run (gloo), equal within fp32
    tolerance to the one-process run."""
    one = one_run(tmp_path)
    local = smol("run", "ablation", str(one), "--runs-dir", "local", "--results-dir", "lr", "--quiet",
                 cwd=tmp_path)  # fmt: skip
    assert local.returncode == 0, local.stderr[-2000:]
    two = smol("run", "ablation", str(one), "launcher.tasks_per_node=2", "--launcher", "slurm",
               "--quiet", cwd=tmp_path, env={**slurm, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]

    def losses(root: str) -> list[float]:
        rows = (tmp_path / root / "one" / "full-s0" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["train/loss"] for r in rows if "train/loss" in r]

    assert losses("runs") == pytest.approx(losses("local"), rel=1e-5)
    logs = tmp_path / "runs" / "one" / "slurm"
    rank1 = list(logs.glob("*_1_log.err"))  # the second task's own log: it ran, as rank 1
    assert len(rank1) == 1 and "in use by process" not in rank1[0].read_text()
    assert "Traceback" not in rank1[0].read_text()


def test_a_tuned_ablation_searches_then_trains_on_slurm_and_a_rerun_submits_nothing(
    tmp_path, slurm
):
    """The tune: phase goes through the launcher too (an array of one search per variant), then
    the runs train at their variant's tuned rate; a rerun submits nothing. (The searches are
    smollm.sweep.optimize as here; the local tuned ablation is tested in test_ablation.)"""
    from .test_ablation import tuned_smoke

    path = tuned_smoke(tmp_path)
    cmd = ["run", "ablation", str(path), "--launcher", "slurm", "--quiet"]
    first = smol(*cmd, cwd=tmp_path, env=slurm)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[slurm] 2 variant searches submitted as one job array" in first.stderr
    root = tmp_path / "runs" / "tuned-smoke"
    tuned = json.loads((root / "tuned.json").read_text())
    assert set(tuned) == {"full", "v1"} and all(t["trials"] >= 1 for t in tuned.values())
    for run in ("full-s0", "full-s1", "v1-s0", "v1-s1"):
        summary = json.loads((root / run / "summary.json").read_text())
        assert summary["status"] == "finished"
        lr = tuned[run.split("-s")[0]]["params"]["train.lr"]
        assert summary["config"]["train"]["lr"] == lr
    again = smol(*cmd, cwd=tmp_path, env=slurm)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[slurm] 0 variant searches submitted" in again.stderr
    assert "[slurm] 0 runs submitted" in again.stderr


def test_a_failed_array_task_is_reported_by_run_name_with_its_log(tmp_path, slurm):
    one = one_run(tmp_path)
    proc = smol("run", "ablation", str(one), "train.device=cuda", "--launcher", "slurm", "--quiet",
                cwd=tmp_path, env=slurm)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("full-s0"))
    assert "failed" in row and "CUDA is not available" in row
    assert row.endswith("log: runs/one/full-s0/slurm/stderr")
    assert (tmp_path / "runs" / "one" / "full-s0" / "slurm" / "stderr").exists()
