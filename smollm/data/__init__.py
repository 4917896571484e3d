"""Data: corpora by name, tokenised once into a cache, packed into blocks, evaluated in bits per byte."""

from smollm.data.cache import CacheError, TokenCache, open_cache, prepare, train_documents
from smollm.data.corpora import CorpusError, resolve_corpus
from smollm.data.evaluate import EvalResult, evaluate
from smollm.data.loader import BlockLoader, StreamLoader, validation_blocks

__all__ = [
    "BlockLoader",
    "CacheError",
    "CorpusError",
    "EvalResult",
    "StreamLoader",
    "TokenCache",
    "evaluate",
    "open_cache",
    "prepare",
    "resolve_corpus",
    "train_documents",
    "validation_blocks",
]
