"""Run directories: every file a run writes, their names, their readers and writers, in one place.

A run directory (`RunDir`) holds:
    config.yaml     the resolved experiment (`smol train config.yaml` re-runs it)
    git.json        SHA and dirty flag of the code    git.diff     its uncommitted changes
    tokenizer/      the run's tokenizer (the directory serves and exports on its own)
    metrics.jsonl   deterministic rows (loss, val)     perf.jsonl   tokens/s, MFU, memory
    samples.jsonl   generations at each evaluation    summary.json status and final figures
    checkpoints/    step-NNNNNNNN.pt (format: smollm.checkpoint)
    wandb_id, wandb/   the W&B run's id and files     error.log    a failed run's traceback
    slurm/          job.json and links to its logs, when a SLURM array task ran it
    eval.json       `smol eval` of the run's final model
    .lock           held by the one process writing the directory

The summary has one writer (`RunDir.write_summary`) and a typed status. An ablation's directory
(`AblationDir`) holds its file, provenance, the pretrained reference, one run per
(variant, seed), named `<variant>-s<seed>`, and `summary/`, the W&B run of its tables; a sweep's (`SweepDir`) holds `trial-NNNN` runs and the
default SQLite study.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from smollm.config import SmolError, experiment_diff

Status = Literal["running", "finished", "failed", "diverged", "pruned", "preempted"]
STATUSES = ("running", "finished", "failed", "diverged", "pruned", "preempted")
JSONL = ("metrics", "perf", "samples")


class RunDirError(SmolError):
    """A run directory that cannot be used as asked; the message says why and what to do."""


class RunDirBusy(RunDirError):
    """Another live process holds the run directory."""


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename; a failed write (a full disk) leaves no temp file behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """A JSON file's contents; a parse error names the file."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: not valid JSON ({e})") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename): readers see the old file or the new one."""
    _write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON-lines file ([] when it does not exist); a bad line names the file."""
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}, line {n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise RunDirError(f"{path}, line {n}: expected a JSON object")
        rows.append(row)
    return rows


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep rows with step <= max_step (and drop a half-written last line) before a resume."""
    if not path.is_file():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by a kill
        if isinstance(row, dict) and row.get("step", 0) <= max_step:
            rows.append(line)
    _write_atomic(path, "".join(r + "\n" for r in rows))


class RunDir:
    """One run's directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ paths
    config = property(lambda self: self.path / "config.yaml")
    git = property(lambda self: self.path / "git.json")
    diff = property(lambda self: self.path / "git.diff")
    tokenizer = property(lambda self: self.path / "tokenizer")
    checkpoints = property(lambda self: self.path / "checkpoints")
    summary_path = property(lambda self: self.path / "summary.json")
    wandb_id = property(lambda self: self.path / "wandb_id")
    error_log = property(lambda self: self.path / "error.log")
    eval_json = property(lambda self: self.path / "eval.json")  # `smol eval` of the run's model
    lock_path = property(lambda self: self.path / ".lock")
    slurm = property(lambda self: self.path / "slurm")  # job.json, links to the job's logs

    def jsonl(self, kind: str) -> Path:
        """metrics.jsonl, perf.jsonl or samples.jsonl."""
        if kind not in JSONL:
            raise ValueError(f"unknown record kind {kind!r}")
        return self.path / f"{kind}.jsonl"

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return read_jsonl(self.jsonl(kind))

    def exists(self) -> bool:
        return self.path.is_dir()

    def is_run(self) -> bool:
        """Whether this looks like a smollm run directory (a config or checkpoints)."""
        return self.config.is_file() or self.checkpoints.is_dir()

    # ------------------------------------------------------------------ summary
    def read_summary(self) -> dict[str, Any] | None:
        """The summary, None when there is none; a malformed one is a RunDirError naming it."""
        if not self.summary_path.is_file():
            return None
        data = read_json(self.summary_path)
        if not isinstance(data, dict) or data.get("status") not in STATUSES:
            raise RunDirError(
                f"{self.summary_path}: not a run summary (needs a status: {', '.join(STATUSES)})"
            )
        return data

    def write_summary(self, status: Status, **fields: Any) -> dict[str, Any]:
        """The one writer of summary.json (atomic)."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        self.path.mkdir(parents=True, exist_ok=True)
        summary = {"status": status, **fields}
        write_json(self.summary_path, summary)
        return summary

    # ------------------------------------------------------------------ the experiment
    def recorded_experiment(self) -> dict[str, Any] | None:
        """The resolved experiment this directory was started with (config.yaml), if any."""
        import yaml

        if not self.config.is_file():
            return None
        try:
            data = yaml.safe_load(self.config.read_text())
        except yaml.YAMLError as e:
            raise RunDirError(f"{self.config}: not valid YAML ({str(e).splitlines()[0]})") from None
        # tracking is written last: a file cut short anywhere before its end lacks it
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), dict) for k in ("model", "data", "train", "tracking")
        ):
            raise RunDirError(
                f"{self.config}: not a whole run config (model, data, train, tracking)"
            )
        data["preset"] = data["model"].pop(
            "preset", data.get("preset")
        )  # as ExperimentConfig has it
        return data

    def experiment_changes(self, experiment: dict[str, Any]) -> list[str]:
        """How `experiment` differs from the one this directory holds ([]: same, or none yet)."""
        recorded = self.recorded_experiment()
        return [] if recorded is None else experiment_diff(recorded, experiment)

    def check_experiment(self, experiment: dict[str, Any]) -> None:
        """Raise unless this directory holds no run yet or exactly `experiment`."""
        diff = self.experiment_changes(experiment)
        if diff:
            shown = "; ".join(diff[:10]) + (
                f"; and {len(diff) - 10} more" if len(diff) > 10 else ""
            )
            raise RunDirError(
                f"{self.path} holds a different experiment ({shown}); use another run directory, "
                "or re-run with --replace to discard it and start over"
            )

    def write_config(self, experiment: dict[str, Any]) -> None:
        """config.yaml from a resolved experiment (as `to_dict()`), atomically."""
        import yaml

        resolved = json.loads(json.dumps(experiment, default=list))  # plain lists and scalars
        resolved["model"] = {"preset": resolved.pop("preset"), **resolved["model"]}
        _write_atomic(self.config, yaml.safe_dump(resolved, sort_keys=False))

    def write_records(self, experiment: dict[str, Any], tokenizer: Any) -> None:
        """config.yaml, git.json (+ git.diff) and the tokenizer, at the start of a run; each
        written whole (temp file or folder, then rename), so a kill never leaves one torn."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_tokenizer(tokenizer)
        self.write_config(experiment)
        info = git_info()
        write_json(self.git, {"sha": info["sha"], "dirty": info["dirty"]})
        if info["diff"]:
            _write_atomic(self.diff, info["diff"])

    def write_tokenizer(self, tokenizer: Any) -> bool:
        """tokenizer/, whole (a temp folder, then rename), unless it is there; whether it wrote."""
        if (self.tokenizer / "tokenizer.json").is_file():
            return False
        tmp = self.path / f".tokenizer.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(self.tokenizer, ignore_errors=True)  # an incomplete one
        os.replace(tmp, self.tokenizer)
        return True

    def remove_leftovers(self) -> list[str]:
        """Delete the temp files and folders that a write killed part-way left (`.NAME.tmp-PID`);
        the caller holds the lock. Their names, for a message."""
        found = sorted(self.path.glob(".*.tmp-*")) if self.path.is_dir() else []
        for tmp in found:
            shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
        return [p.name for p in found]

    # ------------------------------------------------------------------ ownership
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for this process; the OS releases it when the process dies."""
        import fcntl

        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a run directory; give a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.lock_path, "a+")  # noqa: SIM115 - held for the block
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunDirBusy(
                f"{self.path} is in use by process {holder}; wait for it, or use another run directory"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fh.close()  # closing the descriptor releases the lock

    def clear(self) -> None:
        """Delete everything in the directory but its lock (the caller holds it)."""
        if not self.path.is_dir():
            return
        for child in self.path.iterdir():
            if child == self.lock_path:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def git_info(repo: Path | None = None) -> dict[str, Any]:
    """SHA, dirty flag and diff of the code that ran (empty when not in a git checkout)."""
    cwd = repo or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20
        ).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None, "diff": ""}
    return {"sha": sha or None, "dirty": bool(diff.strip()), "diff": diff}


def code_versions(run_dirs: Iterable[Path]) -> str:
    """The git SHAs (marked dirty where they were) that produced these runs, from their git.json."""
    shas = set()
    for d in run_dirs:
        git = RunDir(d).git
        if git.is_file():
            info = read_json(git)
            shas.add(
                f"{(info.get('sha') or 'unknown')[:10]}{' (dirty)' if info.get('dirty') else ''}"
            )
    return ", ".join(sorted(shas)) or "unknown"


def path_segment(name: Any, what: str) -> str:
    """A name that becomes a directory (an ablation, sweep, ladder or variant): exactly one path
    segment, so it never writes outside its folder; anything else is a RunDirError naming it."""
    bad = (
        not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
        or not name.isprintable() or name != name.strip()
    )  # fmt: skip
    if bad:
        raise RunDirError(
            f"{what} name {name!r} cannot be a directory name: give one path segment (no '/', "
            "not '.' or '..', not empty, printable, no leading or trailing spaces)"
        )
    return name


def run_name(variant: str, seed: int) -> str:
    """An ablation run's directory name: `<variant>-s<seed>`."""
    return f"{path_segment(variant, 'variant')}-s{seed}"


class AblationDir:
    """runs/<ablation>/: the ablation file as run, its provenance, the reference, the runs."""

    def __init__(self, runs_root: Path, name: str) -> None:
        self.path = Path(runs_root) / path_segment(name, "ablation")
        self.name = name

    spec = property(lambda self: self.path / "ablation.json")
    provenance = property(lambda self: self.path / "provenance.json")
    reference = property(lambda self: RunDir(self.path / "reference"))
    tune = property(lambda self: self.path / "tune")  # per-variant searches: study.db, trials
    tuned = property(lambda self: self.path / "tuned.json")  # each variant's best parameters
    # the W&B run that carries the ablation's tables (wandb_id, wandb/), one per ablation
    summary_run = property(lambda self: RunDir(self.path / "summary"))
    slurm = property(lambda self: self.path / "slurm")  # submitit's pickles and logs (%A_%a)

    def run(self, variant: str, seed: int) -> RunDir:
        return RunDir(self.path / run_name(variant, seed))

    def exists(self) -> bool:
        return self.spec.is_file()

    def read_spec(self) -> dict[str, Any]:
        spec = read_json(self.spec)
        if not isinstance(spec, dict) or not isinstance(spec.get("variants"), list):
            raise RunDirError(f"{self.spec}: not an ablation file (no variants)")
        return spec


def ablation_names(runs_root: Path) -> list[str]:
    """The ablations that have run directories under runs_root."""
    root = Path(runs_root)
    return sorted(p.name for p in root.glob("*") if AblationDir(root, p.name).exists())


class SweepDir:
    """runs/sweeps/<sweep>/: one run directory per trial, and the default SQLite study."""

    def __init__(self, runs_root: Path, name: str) -> None:
        self.path = Path(runs_root) / "sweeps" / path_segment(name, "sweep")

    def trial(self, number: int, seed: int | None = None) -> RunDir:
        """trial-NNNN, or trial-NNNN-sS for one seed of a trial that trains several."""
        return RunDir(
            self.path / (f"trial-{number:04d}" + (f"-s{seed}" if seed is not None else ""))
        )

    @property
    def study_db(self) -> Path:
        return self.path / "study.db"


def default_run_dir(config: str | os.PathLike | None, runs_root: Path = Path("runs")) -> RunDir:
    """`smol train`'s run directory when none is given: runs/<config file stem>, or runs/default."""
    return RunDir(runs_root / (Path(config).stem if config else "default"))


class LadderDir:
    """runs/<ladder>/: the ladder file as run (ladder.json) and one ablation directory per rung."""

    def __init__(self, runs_root: Path, name: str) -> None:
        self.path = Path(runs_root) / path_segment(name, "ladder")
        self.name = name

    spec = property(lambda self: self.path / "ladder.json")
    summary_run = property(lambda self: RunDir(self.path / "summary"))  # its W&B summary run

    def rung(self, name: str) -> AblationDir:
        return AblationDir(self.path, name)

    def exists(self) -> bool:
        return self.spec.is_file()

    def read_spec(self) -> dict[str, Any]:
        spec = read_json(self.spec)
        if not isinstance(spec, dict) or not isinstance(spec.get("rungs"), list):
            raise RunDirError(f"{self.spec}: not a ladder file (no rungs)")
        return spec


def ladder_names(runs_root: Path) -> list[str]:
    """The ladders that have run directories under runs_root."""
    root = Path(runs_root)
    return sorted(p.name for p in root.glob("*") if LadderDir(root, p.name).exists())
