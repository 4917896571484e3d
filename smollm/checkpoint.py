"""Checkpoints: written atomically (temp file + rename), last K kept, loaded with weights_only=True.

A checkpoint holds everything a run needs to continue bit for bit: model, optimizer, step, tokens
seen, data-loader position and every RNG state. A corrupt file is reported and the previous one
is used.
"""

from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path
from typing import Any

import torch

from smollm.config import ExperimentConfig, SmolError
from smollm.model import SmolLM

CKPT_RE = re.compile(r"step-(\d{8})\.pt")


class CheckpointError(SmolError):
    """No usable checkpoint where one was expected."""


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    d = run_dir / "checkpoints"
    return sorted(p for p in d.glob("step-*.pt") if CKPT_RE.fullmatch(p.name)) if d.is_dir() else []


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


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write step-NNNNNNNN.pt atomically, then delete all but the newest `keep`."""
    d = run_dir / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step-{state['step']:08d}.pt"
    tmp = d / f".{path.name}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # readers see the old file set or the new one, never half a file
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(
    run_dir: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads; corrupt ones are reported on stderr and skipped."""
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            return torch.load(path, map_location=map_location, weights_only=True), path
        except Exception as e:  # truncated zip, bad pickle, ...: any unreadable file
            print(
                f"warning: checkpoint {path} is corrupt ({type(e).__name__}); using the previous one",
                file=sys.stderr,
            )
    return None


def load_run_model(
    run_dir: Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> SmolLM:
    """The model of a run directory's newest usable checkpoint."""
    found = load_latest(run_dir)
    if found is None:
        raise CheckpointError(f"{run_dir}: no usable checkpoint")
    state, _ = found
    model = SmolLM(ExperimentConfig.from_dict(state["config"]).model)
    model.load_state_dict(state["model"])
    return model.to(device=device, dtype=dtype).eval()
