"""smollm: a research harness for small Llama-style language models."""

from smollm.config import ConfigError, ModelConfig
from smollm.hf import load_pretrained, save_pretrained
from smollm.model import SmolLM
from smollm.tokenizer import load_tokenizer

__all__ = [
    "ConfigError",
    "ModelConfig",
    "SmolLM",
    "load_pretrained",
    "load_tokenizer",
    "save_pretrained",
]
__version__ = "0.1.0"
