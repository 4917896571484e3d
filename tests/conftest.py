"""Shared fixtures: a tiny config (fast) and the real SmolLM2 weights (session-scoped, loaded once)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from smollm.config import ModelConfig

from .xdist_units import pytest_xdist_make_scheduler  # noqa: F401  (a hook: pytest finds it here)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test session gets its own smollm cache (tokenised corpora, converted tokenizers)."""
    path = tmp_path_factory.mktemp("smollm-cache")
    os.environ["SMOLLM_CACHE"] = str(path)
    return path


@pytest.fixture
def tiny() -> ModelConfig:
    """dim 64, 2 layers, 4 heads, 2 KV heads, small vocab."""
    return ModelConfig(
        vocab_size=256,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        intermediate_size=128,
        max_seq_len=128,
    )


@pytest.fixture(scope="session")
def gguf_path():
    from smollm.assets import packaged_gguf

    return packaged_gguf()


@pytest.fixture(scope="session")
def real_model(gguf_path):
    from smollm import load_pretrained

    return load_pretrained(str(gguf_path))


@pytest.fixture(scope="session")
def hf_real_model(gguf_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="session")
def tokenizer():
    """The SmolLM2 tokenizer; $SMOLLM_TEST_TOKENIZER names its HF files where the packaged GGUF
    is not installed (the GPU machine: .gpu/tok)."""
    from smollm import load_tokenizer

    return load_tokenizer(os.environ.get("SMOLLM_TEST_TOKENIZER", "smollm2"))


def write_jsonl(path, texts, field="text"):
    import json

    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def make_docs(n: int, seed: int = 0) -> list[str]:
    """n short English-like documents with varied content (so hashes and tokens differ)."""
    import random

    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "model",
        "learns",
        "small",
        "language",
        "of",
        "text",
        "data",
        "every",
        "token",
        "time",
        "once",
        "upon",
        "river",
        "city",
        "light",
    ]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) + f" doc{i}."
        for i in range(n)
    ]


def smol(*args: str, cwd=None, timeout: int = 600, env: dict | None = None):
    """Run the real `smol` entry point as its own process (`python -m smollm.cli ARGS`, forked
    from a warm interpreter: tests/warm.py): exit codes, stdout and stderr as a user sees them."""
    from . import warm

    return warm.run(list(args), cwd=cwd, timeout=timeout, env=dict(env or os.environ))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, and said so, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
