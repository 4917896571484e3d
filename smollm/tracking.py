"""Tracking: a run's rows go to its run directory's JSON-lines files (always) and to Weights &
Biases (online, offline or disabled). The run directory (`smollm.rundir`) stays the source of
truth that tables are rebuilt from; W&B mirrors it for dashboards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from smollm.config import SmolError, TrackingConfig
from smollm.rundir import JSONL, AblationDir, RunDir, truncate_jsonl


def wandb_mode(requested: str) -> str:
    """auto -> online when an API key is configured, else offline (nothing waits on a network);
    online without a key is one line here, before anything runs (wandb's UsageError in mid-run)."""
    if os.environ.get("WANDB_MODE") in ("disabled", "offline") and requested == "auto":
        return os.environ["WANDB_MODE"]
    if requested == "online" and not _has_key():
        raise SmolError(
            "tracking.mode=online: no W&B API key (set WANDB_API_KEY or run `wandb login`); "
            "tracking.mode=auto logs online when a key is set and offline otherwise"
        )
    if requested != "auto":
        return requested
    return "online" if _has_key() else "offline"


def _has_key() -> bool:
    """A W&B API key in the environment, or in ~/.netrc for the W&B server (WANDB_BASE_URL's)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and host.split(":")[0] in netrc.read_text(errors="ignore")


def _wandb_id(run: RunDir) -> str:
    """The run's W&B id, made and recorded the first time: a resume continues the same W&B run."""
    if run.wandb_id.is_file():
        return run.wandb_id.read_text().strip()
    run.path.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    run.wandb_id.write_text(run_id)
    return run_id


class Tracker:
    """Writes a run's metrics/perf/samples rows and mirrors them (and the summary) to W&B."""

    def __init__(
        self, run: RunDir, cfg: TrackingConfig, config: dict[str, Any], resume_step: int | None
    ) -> None:
        self.run = run
        self.mode = wandb_mode(cfg.mode)
        for kind in JSONL:  # a resume drops rows past its checkpoint; a fresh start drops them all
            truncate_jsonl(run.jsonl(kind), resume_step or 0)
        # line-buffered: every row reaches the OS as it is written, so a kill loses no whole row
        self._files = {k: open(run.jsonl(k), "a", buffering=1) for k in JSONL}  # noqa: SIM115
        self.wandb = self._init_wandb(cfg, config) if self.mode != "disabled" else None
        self._table = None

    def _init_wandb(self, cfg: TrackingConfig, config: dict[str, Any]):
        import wandb

        run_id = _wandb_id(self.run)
        # variant and seed at the top of the config: the dashboard groups an ablation's seeds by
        # variant (group = the ablation) and draws their band
        config = {
            **config,
            "variant": cfg.variant or None,
            "seed": config["train"]["seed"],
            **({"size": cfg.size} if cfg.size else {}),
        }  # fmt: skip (a ladder's rung)
        run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=cfg.group or None, job_type=cfg.job_type,
            tags=list(cfg.tags), name=cfg.name or self.run.name, config=config, dir=str(self.run.path),
            id=run_id, resume="allow", mode=self.mode, settings=wandb.Settings(silent=True, init_timeout=60),
        )  # fmt: skip
        run.define_metric("tokens")
        for prefix in ("train/*", "val/*", "eval/*", "perf/*"):
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

    def finish(self, status: str, **fields: Any) -> dict[str, Any]:
        """Write the run's summary (through the run directory) and close the W&B run."""
        summary = self.run.write_summary(status, **fields)
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
            if status == "preempted":  # W&B shows it as preempted; the resume continues the run
                self.wandb.mark_preempting()
        self.close(exit_code=0 if status == "finished" else 1)
        return summary

    def close(self, exit_code: int = 1) -> None:
        for fh in self._files.values():
            fh.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None


def publish_ablation(
    root: AblationDir,
    tracking: dict[str, Any],
    table: tuple[list[str], list[list[Any]]],
    images: dict[str, Path],
    headline: dict[str, Any],
) -> str | None:
    """The ablation's answer on W&B: one run in its group (job_type `summary`) with the table, the
    figures and the headline numbers in its summary. It keeps one id, so publishing again replaces
    it (online: the same run, its summary overwritten; offline: the old files are removed first).
    Returns the mode it was published in, None when tracking is disabled."""
    mode = wandb_mode(tracking.get("mode", "auto"))
    if mode == "disabled":
        return None
    import wandb

    run_dir = root.summary_run
    shutil.rmtree(run_dir.path / "wandb", ignore_errors=True)
    run = wandb.init(
        project=tracking.get("project") or "smollm", entity=tracking.get("entity") or None,
        group=root.name, job_type="summary", name=f"{root.name}-summary", id=_wandb_id(run_dir),
        resume="allow", mode=mode, dir=str(run_dir.path), config={"ablation": root.name},
        settings=wandb.Settings(silent=True, init_timeout=60),
    )  # fmt: skip
    columns, rows = table
    run.log({"summary": wandb.Table(columns=columns, data=rows),
             **{name: wandb.Image(str(path)) for name, path in images.items()}})  # fmt: skip
    run.summary.update(headline)
    run.finish()
    return mode
