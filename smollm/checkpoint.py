"""Checkpoints: `checkpoints/step-NNNNNNNN.pt` in a run directory; this module owns their format.

A checkpoint holds everything a run needs to continue bit for bit: model, optimizer, step, tokens
seen, data-loader position, every RNG state and the resolved experiment. Writes are atomic (temp
file, fsync, rename); a full disk is one line that says so and leaves no partial file. A file that
does not load is moved aside to `checkpoints/corrupt/` with a line naming it, so it can neither be
resumed from nor outrank the checkpoints written after it; pruning keeps the newest `keep`.
"""

from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path
from typing import Any

import torch

from smollm.config import ExperimentConfig, SmolError, disk_full
from smollm.model import SmolLM
from smollm.rundir import RunDir

CKPT_RE = re.compile(r"step-(\d{8})\.pt")


class CheckpointError(SmolError):
    """No usable checkpoint where one was expected, or one that cannot be written."""


def checkpoint_paths(run_dir: Path | RunDir) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    d = RunDir(run_dir).checkpoints if not isinstance(run_dir, RunDir) else run_dir.checkpoints
    return sorted(p for p in d.glob("step-*.pt") if CKPT_RE.fullmatch(p.name)) if d.is_dir() else []


def step_of(path: Path) -> int:
    return int(CKPT_RE.fullmatch(path.name).group(1))


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_partial(run_dir: Path | RunDir) -> None:
    """Delete temp files that a killed or failed write left behind."""
    d = RunDir(run_dir).checkpoints if not isinstance(run_dir, RunDir) else run_dir.checkpoints
    for tmp in d.glob(".step-*.pt.tmp-*") if d.is_dir() else []:
        tmp.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path | RunDir, state: dict[str, Any], keep: int) -> Path:
    """Write step-NNNNNNNN.pt atomically, then delete all but the newest `keep` (older steps only)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    d = run.checkpoints
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step-{state['step']:08d}.pt"
    tmp = d / f".{path.name}.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # readers see the old file set or the new one, never half a file
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        if disk_full(e):
            raise CheckpointError(
                f"cannot write checkpoint {path}: the disk is full; the previous checkpoints are "
                "intact: free space and re-run the same command to resume"
            ) from None
        raise
    for old in checkpoint_paths(run)[:-keep]:
        if step_of(old) < state["step"]:
            old.unlink(missing_ok=True)
    return path


def _move_aside(path: Path, error: BaseException) -> None:
    aside = path.parent / "corrupt" / path.name
    aside.parent.mkdir(exist_ok=True)
    os.replace(path, aside)
    print(
        f"warning: checkpoint {path} does not load ({type(error).__name__}); moved to {aside}",
        file=sys.stderr,
    )


def load_latest(
    run_dir: Path | RunDir, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads; the ones that do not are moved aside (one line each)."""
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a smollm checkpoint")
            return state, path
        except Exception as e:  # truncated zip, bad pickle, ...: any unreadable file
            _move_aside(path, e)
    return None


def load_run_model(
    run_dir: Path | RunDir, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> SmolLM:
    """The model of a run: its final checkpoint when the run finished, else the newest one.

    A finished run whose final checkpoint does not load is an error, never an older model.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    found = load_latest(run)
    if found is None:
        raise CheckpointError(f"{run.path}: no usable checkpoint")
    state, path = found
    summary = run.read_summary()
    if summary and summary["status"] == "finished" and summary.get("step") != state["step"]:
        raise CheckpointError(
            f"{run.path} finished at step {summary.get('step')} but its newest usable checkpoint "
            f"is {path.name}: refusing to hand back an older model; re-run its `smol train` command "
            "(same run directory) to recompute the final steps from that checkpoint"
        )
    model = SmolLM(ExperimentConfig.from_dict(state["config"]).model)
    model.load_state_dict(state["model"])
    return model.to(device=device, dtype=dtype).eval()
