"""Where runs execute: in this process (and its local worker pool), or as one SLURM job array.

A run is `train(experiment, run_dir)` wrapped in a picklable task; this module decides where the
tasks go and never what they compute (submitit's model: the work does not know its scheduler).
`--launcher slurm` sends an ablation's runs out as *one* `sbatch --array` through submitit, with
the resources of the file's `launcher:` section (overridable with `launcher.KEY=VALUE`):

    launcher:
      partition: gpu          # sbatch --partition (default: the cluster's default)
      account: ""             # sbatch --account
      gpus_per_run: 1         # GPUs of each of a run's nodes
      cpus_per_run: 8         # CPUs of each of a run's processes
      nodes: 1                # nodes of one run
      tasks_per_node: 0       # processes of one run per node (0: one per GPU, at least one)
      mem_gb: 0               # memory of each run (0: the partition's default)
      time_min: 120           # time limit of each run
      max_parallel: 0         # runs at once (the array's %N; 0: no cap)
      sbatch: [--qos=high]    # extra sbatch flags, as given

Each run's directory records its job (`slurm/job.json`) and links its logs (`slurm/stdout`,
`slurm/stderr`), so a second invocation submits nothing that is queued, running or finished, and
a failed run is reported with the path to its log. A task that is preempted (SIGUSR2 from
submitit's `--signal`, or SIGTERM) saves at a step boundary in the training loop and requeues
itself; the requeued task resumes bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smollm.config import ConfigError, Preempted, SmolError, check_ranges
from smollm.rundir import RunDir, read_json, write_json

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmConfig:
    """Per-run resources of a SLURM job array (the `launcher:` section)."""

    partition: str = ""
    account: str = ""
    gpus_per_run: int = 0  # per node
    cpus_per_run: int = 1  # per task
    nodes: int = 1
    tasks_per_node: int = 0  # processes of one run on each node; 0: one per GPU (at least one)
    mem_gb: float = 0.0
    time_min: int = 60
    max_parallel: int = 0
    sbatch: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_ranges("launcher", self, {"gpus_per_run": "[0, 64]", "cpus_per_run": "[1, 4096]",
                                        "nodes": "[1, 100000]", "tasks_per_node": "[0, 1024]",
                                        "mem_gb": "[0, inf)", "time_min": "[1, inf)",
                                        "max_parallel": "[0, inf)"})  # fmt: skip


def slurm_config(section: Any, overrides: list[str], where: str) -> SlurmConfig:
    """The `launcher:` section merged with `launcher.KEY=VALUE` overrides; an unknown key is one
    line naming it and the valid ones."""
    from smollm.experiment import parse_override

    fields = {f.name: f for f in dataclasses.fields(SlurmConfig)}
    if not isinstance(section or {}, dict):
        raise ConfigError(f"{where}: launcher: expected a mapping of {', '.join(fields)}")
    values = dict(section or {})
    values.update(parse_override(o.removeprefix("launcher.")) for o in overrides)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown launcher key(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(fields)}")  # fmt: skip
    if isinstance(values.get("sbatch"), str):
        values["sbatch"] = values["sbatch"].split()
    try:
        return SlurmConfig(**{k: tuple(v) if k == "sbatch" else v for k, v in values.items()})
    except TypeError as e:
        raise ConfigError(f"{where}: launcher: {e}") from None


@dataclass
class Task:
    """One run to execute: its name, its directory and a picklable zero-argument callable."""

    name: str
    run: RunDir
    fn: Callable[[], Any]


class Requeueing:
    """What a SLURM array task runs: the task; when it is preempted (its checkpoint saved at a
    step boundary), it asks SLURM to requeue this array task and exits, and the requeued task
    calls it again, which resumes. `checkpoint` is submitit's hook for a signal that arrives
    outside the training loop: nothing to save there, the same call is requeued."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def __call__(self) -> Any:
        try:
            return self.fn()
        except Preempted as e:  # every rank saved together; the first asks for the requeue
            print(str(e), file=sys.stderr, flush=True)
            if os.environ.get("SLURM_PROCID", "0") == "0":
                job = _this_job()
                subprocess.run(["scontrol", "requeue", job], check=True)
                print(f"requeued SLURM job {job}", file=sys.stderr, flush=True)
            sys.exit(128 + e.signum)

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _this_job() -> str:
    """This array task's SLURM id, as `scontrol` names it (ARRAYID_TASK, or the job id)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


# ---------------------------------------------------------------------------- submitting


def _executor(folder: Path, cfg: SlurmConfig, name: str):
    """A submitit SLURM executor with the per-run resources; sbatch missing is one line."""
    if shutil.which("sbatch") is None:
        raise SmolError("--launcher slurm: `sbatch` is not on PATH (is this a SLURM login node?); "
                        "use --launcher local")  # fmt: skip
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, python=sys.executable)
    extra = dict(_sbatch_flag(f) for f in cfg.sbatch)
    params = {"job_name": name, "time": cfg.time_min, "cpus_per_task": cfg.cpus_per_run,
              "signal_delay_s": 120, "array_parallelism": cfg.max_parallel or 1024,
              "additional_parameters": {"requeue": True, **extra}}  # fmt: skip
    params.update({k: v for k, v in (("partition", cfg.partition), ("account", cfg.account)) if v})
    # one run = nodes x tasks_per_node processes, one per GPU: each task is a rank, its
    # rendezvous from SLURM's variables (smollm.runtime.slurm_rendezvous); DDP or FSDP by the file
    params["nodes"] = cfg.nodes
    params["ntasks_per_node"] = cfg.tasks_per_node or max(1, cfg.gpus_per_run)
    if cfg.gpus_per_run:
        params["gpus_per_node"] = cfg.gpus_per_run
    if cfg.mem_gb:
        params["mem"] = f"{cfg.mem_gb}GB"
    executor.update_parameters(**params)
    return executor


def _sbatch_flag(flag: str) -> tuple[str, Any]:
    """'--qos=high' -> ('qos', 'high'); '--exclusive' -> ('exclusive', True)."""
    if not flag.startswith("--"):
        raise ConfigError(f"launcher.sbatch: {flag!r} is not a long sbatch flag (--name=value)")
    key, sep, value = flag[2:].partition("=")
    return key.replace("-", "_"), (value if sep else True)


def submit(tasks: list[Task], folder: Path, cfg: SlurmConfig, name: str) -> list[str]:
    """Every task as one SLURM job array; each run directory records its job and links its logs.
    sbatch's own message is the error when it refuses (a partition it does not know)."""
    if not tasks:
        return []
    executor = _executor(folder, cfg, name)
    before = set(folder.iterdir()) if folder.is_dir() else set()
    with _stderr_captured() as said:  # sbatch writes its refusal to our stderr
        try:
            with executor.batch():  # one sbatch --array for all of them
                jobs = [executor.submit(Requeueing(t.fn)) for t in tasks]
        except Exception as e:  # submitit wraps sbatch's CalledProcessError in its own
            failed = e
        else:
            failed = None
    if failed is not None:
        for left in set(folder.iterdir()) - before:  # the pickled tasks no job will read
            if left.is_file():
                left.unlink()
        said_lines = said().splitlines()  # its fatal line says most, else its first error
        lines = [ln for ln in said_lines if "sbatch: fatal" in ln]
        lines += [ln for ln in said_lines if "sbatch: error" in ln]
        raise SmolError(f"sbatch refused the array: {(lines or [str(failed)])[0].strip()}")
    for task, job in zip(tasks, jobs, strict=True):
        record_job(task.run, job.job_id, job.paths.stdout, job.paths.stderr)
    return [job.job_id for job in jobs]


@contextlib.contextmanager
def _stderr_captured():
    """File descriptor 2 into a temp file for the block (a child process's too); yields a
    function that returns what was written. Echoed afterwards unless it was sbatch's refusal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        text = ""
        try:
            yield lambda: text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            if text and "sbatch: error" not in text:
                sys.stderr.write(text)


def record_job(run: RunDir, job_id: str, stdout: Path, stderr: Path) -> None:
    """runs/.../<run>/slurm/: job.json and (relative) links to the job's logs."""
    run.slurm.mkdir(parents=True, exist_ok=True)
    write_json(run.slurm / "job.json", {"job_id": job_id, "submitted": time.time()})
    for link, target in (("stdout", stdout), ("stderr", stderr)):
        path = run.slurm / link
        path.unlink(missing_ok=True)
        path.symlink_to(os.path.relpath(Path(target).resolve(), run.slurm.resolve()))


def recorded_job(run: RunDir) -> str | None:
    """The SLURM job id a run directory records, if any."""
    path = run.slurm / "job.json"
    return read_json(path).get("job_id") if path.is_file() else None


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> PENDING / RUNNING / ... for the ids SLURM still holds (squeue); a job that has
    left the queue is absent (finished, failed or cancelled: its run directory says which)."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        raise SmolError("runs here were sent to SLURM, but `squeue` is not on PATH; run this "
                        "command where SLURM is (a login node)")  # fmt: skip
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    if proc.returncode != 0:
        raise SmolError(f"squeue failed: {proc.stderr.strip() or proc.returncode}")
    queued = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    return {j: queued[j].strip() for j in job_ids if j in queued}


def wait_for(job_ids: list[str], progress: bool, poll_s: float = 2.0) -> None:
    """Until none of the jobs is queued or running; a bar of finished / running / pending."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(job_ids), desc="SLURM runs", unit="run", disable=not progress)
    while True:
        states = queue_states(job_ids)
        running = sum(s == "RUNNING" for s in states.values())
        bar.n = len(job_ids) - len(states)
        bar.set_postfix(running=running, pending=len(states) - running)
        bar.refresh()
        if not states:
            break
        time.sleep(poll_s)
    bar.close()
