"""The token cache: a corpus tokenised once into uint16 memmap shards, reused by every later run.

Layout of one cache directory (keyed by corpus, tokenizer, split and pipeline version):
    meta.json          written last; its presence marks a complete build
    train-00000.bin    token ids, documents joined with <|endoftext|>
    val-00000.bin
A build goes to a temporary sibling directory and is renamed into place, so a build killed halfway
never leaves a cache that looks complete. Shard sizes and SHA-256 sums are checked on open.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from smollm import assets
from smollm.config import DataConfig, SmolError
from smollm.data.corpora import Corpus, is_validation, resolve_corpus
from smollm.data.vocab import (
    bpe_size,
    corpus_tokenizer,
    encode_batch,
    endoftext_id,
    token_bytes,
    tokenizer_identity,
)

PIPELINE_VERSION = 1
SPLITS = ("train", "val")
SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB at uint16) per shard
BATCH_DOCS = 256
STREAM_VAL_DOCS = 1000  # validation documents cached from a streamed corpus
BPE_TRAIN_DOCS = 100_000  # documents a bpe-N tokenizer is trained on, at most


class CacheError(SmolError):
    """A cache that is missing, corrupt or truncated."""


@dataclass
class TokenCache:
    """An opened cache: per split, a list of memmapped shards and the split's statistics."""

    path: Path
    meta: dict
    shards: dict[str, list[np.memmap]]

    def stats(self, split: str) -> dict:
        return self.meta["splits"][split]

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]


def cache_key(corpus: Corpus, cfg: DataConfig, fitted_to: str = "") -> str:
    """The cache directory's name; `fitted_to`: what a bpe-N tokenizer was trained on when that
    is not this corpus alone (a mixture's key)."""
    parts = [
        corpus.identity,
        tokenizer_identity(cfg.tokenizer),
        *([f"fitted={fitted_to}"] if fitted_to and bpe_size(cfg.tokenizer) else []),
        f"val={cfg.val_fraction}",
        f"max={cfg.max_docs}",
        *(["stream"] if cfg.stream else []),  # a streamed corpus caches its validation split only
        f"v{PIPELINE_VERSION}",
    ]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def safe(text: str) -> str:  # a directory name: no separators, whatever the names hold
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:40]

    return f"{safe(corpus.name.split('/')[-1])}-{safe(tokenizer_identity(cfg.tokenizer))}-{digest}"


def prepare_corpus(cfg: DataConfig, progress: bool = True) -> tuple[TokenCache, object]:
    """Open the cache for `cfg`'s one corpus, building it first if needed; (cache, tokenizer).
    (`smollm.data.prepare` also takes a `data.mixture`.)"""
    corpus = resolve_corpus(cfg.corpus, cfg.text_field, cfg.max_docs)
    key = cache_key(corpus, cfg)
    train_docs = itertools.islice(train_documents(corpus, cfg.val_fraction), BPE_TRAIN_DOCS)
    tokenizer = corpus_tokenizer(cfg.tokenizer, train_docs, key=key)
    return corpus_cache(corpus, cfg, tokenizer, key, progress), tokenizer


def corpus_cache(
    corpus: Corpus, cfg: DataConfig, tokenizer, key: str, progress: bool
) -> TokenCache:
    """The opened cache called `key`, built first (once) from `corpus` with `tokenizer`."""
    path = assets.cache_root() / "data" / key
    if not (path / "meta.json").is_file():
        _build(corpus, cfg, tokenizer, path, progress)
    return open_cache(path)


def train_documents(corpus: Corpus, val_fraction: float) -> Iterator[str]:
    """The training split's documents, in corpus order (what a streamed run trains on)."""
    return (d for d in corpus.documents() if not is_validation(d, val_fraction))


def _cached_documents(corpus: Corpus, cfg: DataConfig) -> Iterator[str]:
    """Every document, or for a streamed corpus its first STREAM_VAL_DOCS validation documents."""
    if not cfg.stream:
        yield from corpus.documents()
        return
    kept = 0
    for doc in corpus.documents():
        if is_validation(doc, cfg.val_fraction):
            yield doc
            kept += 1
            if kept == STREAM_VAL_DOCS:
                return


def open_cache(path: Path, verify: bool = True) -> TokenCache:
    """Memmap every shard after checking its size (and checksum, with `verify`)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(
            f"{path}: no readable meta.json ({e}); delete the directory to rebuild it"
        ) from None
    dtype = np.dtype(meta["dtype"])
    shards: dict[str, list[np.memmap]] = {}
    for split in SPLITS:
        shards[split] = []
        for shard in meta["splits"][split]["shards"]:
            f = path / shard["file"]
            size = f.stat().st_size if f.is_file() else -1
            if size != shard["tokens"] * dtype.itemsize:
                raise CacheError(
                    f"{f}: truncated or missing shard ({size} bytes, expected {shard['tokens'] * dtype.itemsize}); delete {path} to rebuild"
                )
            if verify and _sha256(f) != shard["sha256"]:
                raise CacheError(
                    f"{f}: corrupt shard (checksum mismatch); delete {path} to rebuild"
                )
            shards[split].append(np.memmap(f, dtype=dtype, mode="r"))
    return TokenCache(path, meta, shards)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class _ShardWriter:
    """Appends token arrays to fixed-size shard files of one split."""

    def __init__(self, root: Path, split: str, dtype: np.dtype) -> None:
        self.root, self.split, self.dtype = root, split, dtype
        self.shards: list[dict] = []
        self.fh = None
        self.docs = self.tokens = self.bytes = 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.fh is None or self.shards[-1]["tokens"] >= SHARD_TOKENS:
                self._next_shard()
            room = SHARD_TOKENS - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            self.fh.write(part.tobytes())
            self.shards[-1]["tokens"] += len(part)
            self.tokens += len(part)

    def _next_shard(self) -> None:
        self.close_file()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.fh = open(self.root / name, "wb")  # noqa: SIM115 - closed in close_file
        self.shards.append({"file": name, "tokens": 0})

    def close_file(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def summary(self) -> dict:
        self.close_file()
        for shard in self.shards:
            shard["sha256"] = _sha256(self.root / shard["file"])
        return {
            "docs": self.docs,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "shards": self.shards,
        }


def _build(corpus: Corpus, cfg: DataConfig, tokenizer, path: Path, progress: bool) -> None:
    """Tokenise every document into its split's shards, then rename the directory into place."""
    vocab = len(tokenizer)
    dtype = np.dtype(np.uint16 if vocab <= 1 << 16 else np.uint32)
    eot = endoftext_id(tokenizer)
    with assets.atomic_dir(path) as tmp:  # meta.json, written last, marks a complete build
        writers = {s: _ShardWriter(tmp, s, dtype) for s in SPLITS}
        bar = tqdm(desc=f"tokenising {corpus.name}", unit=" docs", disable=not progress)
        batch: list[str] = []
        for doc in _cached_documents(corpus, cfg):
            batch.append(doc)
            if len(batch) == BATCH_DOCS:
                _write_batch(batch, tokenizer, eot, dtype, writers, cfg.val_fraction)
                bar.update(len(batch))
                batch = []
        _write_batch(batch, tokenizer, eot, dtype, writers, cfg.val_fraction)
        bar.update(len(batch))
        bar.close()
        _check_splits(corpus, writers, splits=("val",) if cfg.stream else SPLITS)
        meta = {
            "version": PIPELINE_VERSION,
            "corpus": corpus.name,
            "corpus_identity": corpus.identity,
            "tokenizer": tokenizer_identity(cfg.tokenizer),
            "vocab_size": vocab,
            "endoftext_id": eot,
            "dtype": dtype.name,
            "val_fraction": cfg.val_fraction,
            "splits": {s: w.summary() for s, w in writers.items()},
            "token_bytes": token_bytes(tokenizer).tolist(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))


def _write_batch(
    batch: list[str], tokenizer, eot: int, dtype, writers: dict, val_fraction: float
) -> None:
    if not batch:
        return
    for text, ids in zip(batch, encode_batch(tokenizer, batch), strict=True):
        w = writers["val" if is_validation(text, val_fraction) else "train"]
        w.write(np.asarray([*ids, eot], dtype=dtype))  # each document followed by <|endoftext|>
        w.docs += 1
        w.bytes += len(text.encode("utf-8"))


def _check_splits(corpus: Corpus, writers: dict, splits: tuple[str, ...]) -> None:
    total = sum(w.docs for w in writers.values())
    if total == 0:
        raise CacheError(f"corpus {corpus.name!r} is empty: no documents with text")
    for split in splits:
        if writers[split].tokens < 2:
            raise CacheError(
                f"corpus {corpus.name!r}: the {split} split is empty ({total} documents in all); "
                "add documents or change data.val_fraction"
            )
