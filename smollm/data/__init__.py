"""Data: corpora by name, tokenised once into a cache, packed into blocks, evaluated in bits per byte."""

from smollm.data.corpora import CorpusError, resolve_corpus
from smollm.data.evaluate import EvalResult, evaluate
from smollm.data.loader import BlockLoader, StreamLoader, validation_blocks
from smollm.data.mixture import Mixture, make_loader, prepare
from smollm.data.tokencache import CacheError, TokenCache, open_cache, train_documents

__all__ = [
    "BlockLoader",
    "CacheError",
    "CorpusError",
    "EvalResult",
    "Mixture",
    "StreamLoader",
    "TokenCache",
    "evaluate",
    "make_loader",
    "open_cache",
    "prepare",
    "resolve_corpus",
    "train_documents",
    "validation_blocks",
]
