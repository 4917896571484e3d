"""Run records: the local run directory (always) and Weights & Biases (online, offline or disabled).

The run directory is the source of truth that tables are rebuilt from:
    config.yaml     resolved experiment config        git.json      SHA, dirty flag, diff
    metrics.jsonl   deterministic per-step metrics    perf.jsonl    tokens/s, MFU, memory (timing)
    samples.jsonl   generations at each evaluation    summary.json  final outcome
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from smollm.config import TrackingConfig


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


def machine() -> dict[str, Any]:
    """What the runs ran on, for the provenance line of the tables."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    else:
        cpu = (
            next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                platform.processor(),
            )
            if Path("/proc/cpuinfo").is_file()
            else platform.processor()
        )
        info["device"] = f"CPU: {cpu}"
    return info


def wandb_mode(requested: str) -> str:
    """auto -> online when an API key is configured, else offline (nothing waits on a network)."""
    if os.environ.get("WANDB_MODE") in ("disabled", "offline") and requested == "auto":
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    netrc = Path.home() / ".netrc"
    if not has_key and netrc.is_file():
        has_key = "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if has_key else "offline"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON-lines file ([] when it does not exist)."""
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.is_file()
        else []
    )


def code_versions(run_dirs: Iterable[Path]) -> str:
    """The git SHAs (marked dirty where they were) that produced these runs, from their git.json."""
    shas = set()
    for d in run_dirs:
        if (d / "git.json").is_file():
            info = json.loads((d / "git.json").read_text())
            shas.add(
                f"{(info.get('sha') or 'unknown')[:10]}{' (dirty)' if info.get('dirty') else ''}"
            )
    return ", ".join(sorted(shas)) or "unknown"


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
        if row.get("step", 0) <= max_step:
            rows.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)


class Tracker:
    """Writes the run directory's JSON-lines files and mirrors everything to W&B."""

    def __init__(
        self, run_dir: Path, cfg: TrackingConfig, config: dict[str, Any], resume_step: int | None
    ) -> None:
        self.run_dir = run_dir
        self.mode = wandb_mode(cfg.mode)
        kinds = ("metrics", "perf", "samples")
        for kind in kinds:  # a resume drops rows past its checkpoint; a fresh start drops them all
            truncate_jsonl(run_dir / f"{kind}.jsonl", resume_step or 0)
        # line-buffered: every row reaches the OS as it is written, so a kill loses no whole row
        self._files = {k: open(run_dir / f"{k}.jsonl", "a", buffering=1) for k in kinds}  # noqa: SIM115
        self.wandb = self._init_wandb(cfg, config) if self.mode != "disabled" else None
        self._table = None

    def _init_wandb(self, cfg: TrackingConfig, config: dict[str, Any]):  # noqa: ANN202
        import wandb

        id_file = self.run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=cfg.group or None, job_type=cfg.job_type,
            tags=list(cfg.tags), name=cfg.name or self.run_dir.name, config=config, dir=str(self.run_dir),
            id=run_id, resume="allow", mode=self.mode, settings=wandb.Settings(silent=True, init_timeout=60),
        )  # fmt: skip
        run.define_metric("tokens")
        for prefix in ("train/*", "val/*", "perf/*"):
            run.define_metric(
                prefix, step_metric="tokens"
            )  # curves of runs compare at equal tokens
        return run

    def log(self, kind: str, row: dict[str, Any]) -> None:
        """Append a row to <kind>.jsonl and send it to W&B under <kind>/ names."""
        self._files[kind].write(json.dumps(row) + "\n")
        if self.wandb is not None and kind != "samples":
            prefix = {"metrics": "", "perf": "perf/"}[kind]
            self.wandb.log(
                {
                    (k if "/" in k or k in ("step", "tokens") else prefix + k): v
                    for k, v in row.items()
                }
            )

    def log_samples(self, step: int, tokens: int, samples: list[dict[str, str]]) -> None:
        for s in samples:
            self.log("samples", {"step": step, "tokens": tokens, **s})
        if self.wandb is not None:
            import wandb

            if self._table is None:
                self._table = wandb.Table(
                    columns=["step", "tokens", "prompt", "text"], log_mode="INCREMENTAL"
                )
            for s in samples:
                self._table.add_data(step, tokens, s["prompt"], s["text"])
            self.wandb.log({"samples": self._table, "tokens": tokens})

    def finish(self, summary: dict[str, Any]) -> None:
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, self.run_dir / "summary.json")
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
        self.close(exit_code=0 if summary.get("status") == "finished" else 1)

    def close(self, exit_code: int = 1) -> None:
        for fh in self._files.values():
            fh.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None
