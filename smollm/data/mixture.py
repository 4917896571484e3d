"""Mixtures of corpora (`data.mixture`): named sources with weights, one token cache per source.

A mixture is configuration (smollm.config.DataConfig): `mixture: {sotu: 0.5, shakespeare: 0.3,
wiki: 0.2}`, optionally earlier `schedule` stages (`{until_tokens: N, weights: {...}}`, each in
force until N tokens have been drawn) and `val_weights`.

- Each source is any corpus smollm reads, cached on its own (`tokencache.corpus_cache`): a source's
  tokenisation is shared by every mixture that contains it (with the same tokenizer).
- A `bpe-N` tokenizer is fitted to the mixture's training documents, interleaved in proportion to
  the weights, so that no source is scored with a vocabulary fitted to another.
- Blocks are drawn batch by batch: which source each block of a batch comes from is a draw from
  the weights in force, seeded by (seed, batch number); within a source, blocks follow that
  source's own shuffled epochs. The state (batches drawn, each source's epoch and cursor) resumes
  bit for bit; a source that runs out starts its next epoch, and the loader counts epochs per source.
- Every source keeps its own held-out split; an evaluation reports each source's bpb and their
  weighted mean (smollm.data.evaluate).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from smollm.config import DataConfig, InputError
from smollm.data.corpora import Corpus, CorpusError, resolve_corpus
from smollm.data.loader import Epochs, corpus_loader
from smollm.data.tokencache import (
    BPE_TRAIN_DOCS,
    TokenCache,
    cache_key,
    corpus_cache,
    prepare_corpus,
    train_documents,
)
from smollm.data.vocab import corpus_tokenizer

MIX_STREAM = 0x6D6978  # "mix": the draw stream's tag, apart from every permutation's


@dataclass
class Mixture:
    """An opened mixture: each source's cache, and the weights in force at each point."""

    caches: dict[str, TokenCache]  # in the mixture's order
    weights: dict[str, float]  # after the last schedule stage (throughout, without one)
    stages: tuple[tuple[int, dict[str, float]], ...]  # (until_tokens, weights), earlier stages
    val_weights: dict[str, float]  # how the headline bpb averages the sources'

    @property
    def vocab_size(self) -> int:
        return next(iter(self.caches.values())).vocab_size

    def weights_at(self, tokens: int) -> dict[str, float]:
        """The weights in force once `tokens` tokens have been drawn."""
        for until, weights in self.stages:
            if tokens < until:
                return weights
        return self.weights

    def trained_on(self) -> list[str]:
        """The sources some stage draws from (weight above 0)."""
        stages = [w for _, w in self.stages] + [self.weights]
        return [name for name in self.caches if any(w.get(name, 0) > 0 for w in stages)]


def prepare(cfg: DataConfig, progress: bool = True):
    """The data `cfg` names, its caches built first where needed: (cache, tokenizer) for one
    corpus, (Mixture, tokenizer) for a `data.mixture`."""
    if cfg.mixture is None:
        return prepare_corpus(cfg, progress)
    return prepare_mixture(cfg, progress)


def make_loader(cfg: DataConfig, data, tok, seed: int, rank: int = 0, world: int = 1):
    """The training blocks of what `prepare` returned: drawn from a mixture's sources by weight,
    or one corpus' (smollm.data.loader.corpus_loader)."""
    if cfg.mixture is None:
        return corpus_loader(cfg, data, tok, seed, rank, world)
    return MixtureLoader(data, cfg.seq_len, seed, rank, world)


def sources(cfg: DataConfig) -> dict[str, Corpus]:
    """The mixture's corpora, resolved (an unknown name is one line, before anything is built)."""
    assert cfg.mixture is not None
    return {name: resolve_corpus(name, cfg.text_field, cfg.max_docs) for name in cfg.mixture}


def prepare_mixture(cfg: DataConfig, progress: bool = True) -> tuple[Mixture, object]:
    """Every source's cache (built once each) and the shared tokenizer."""
    corpora = sources(cfg)
    fitted = mixture_key(corpora, cfg)
    tokenizer = corpus_tokenizer(cfg.tokenizer, interleaved(corpora, cfg), key=fitted)
    caches = {
        name: corpus_cache(corpus, cfg, tokenizer, cache_key(corpus, cfg, fitted), progress)
        for name, corpus in corpora.items()
    }
    stages = tuple((s["until_tokens"], s["weights"]) for s in cfg.schedule or ())
    return Mixture(caches, cfg.mixture, stages, cfg.val_weights or cfg.mixture), tokenizer


def mixture_key(corpora: dict[str, Corpus], cfg: DataConfig) -> str:
    """What a mixture's bpe-N tokenizer is fitted to: its sources and weights."""
    import hashlib

    parts = [f"{c.identity}={cfg.mixture[n]!r}" for n, c in sorted(corpora.items())]
    parts += [f"val={cfg.val_fraction}", f"max={cfg.max_docs}"]
    return "mix-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def interleaved(corpora: dict[str, Corpus], cfg: DataConfig) -> Iterator[str]:
    """Training documents of every weighted source, interleaved so that each source's share of
    the bytes follows its weight: the next document comes from the source furthest behind its
    share. Stops when a source runs out (the shares would drift) or after BPE_TRAIN_DOCS."""
    assert cfg.mixture is not None
    weighted = {n: w for n, w in cfg.mixture.items() if w > 0}
    streams = {n: train_documents(corpora[n], cfg.val_fraction) for n in weighted}
    taken = dict.fromkeys(weighted, 0)
    for _ in range(BPE_TRAIN_DOCS):
        name = min(weighted, key=lambda n: (taken[n] / weighted[n], n))
        doc = next(streams[name], None)
        if doc is None:
            if taken[name] == 0:
                raise CorpusError(f"mixture source {name!r} has no training documents")
            return
        taken[name] += len(doc.encode("utf-8"))
        yield doc


class MixtureLoader:
    """Training blocks drawn from the sources by weight; shards the batch by rank under DDP,
    as BlockLoader does (every rank draws the same batch and takes its slice)."""

    def __init__(
        self, mixture: Mixture, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.mixture, self.seq_len, self.seed = mixture, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.names = list(mixture.caches)
        self.sources = {
            name: Epochs(cache.shards["train"], seq_len, [seed, zlib.crc32(name.encode())])
            for name, cache in mixture.caches.items()
        }
        for name in mixture.trained_on():
            if len(self.sources[name].index) == 0:
                raise InputError(f"mixture source {name!r}: its train split has fewer than "
                                 f"seq_len + 1 = {seq_len + 1} tokens")  # fmt: skip
        self.batches = 0  # drawn so far

    def probabilities(self) -> np.ndarray:
        """The weights in force now, normalised, in source order."""
        drawn = sum(s.drawn for s in self.sources.values())  # blocks, every rank's together
        weights = self.mixture.weights_at(drawn * self.seq_len)
        p = np.array([weights.get(name, 0.0) for name in self.names])
        return p / p.sum()

    def draw(self, need: int) -> np.ndarray:
        """Which source (index into `names`) each of the batch's `need` blocks comes from."""
        rng = np.random.default_rng([self.seed, MIX_STREAM, self.batches])
        return rng.choice(len(self.names), size=need, p=self.probabilities())

    def next(self, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        need = micro_batch * self.world_size
        choice = self.draw(need)
        rows: list[tuple[str, np.ndarray]] = [("", np.zeros(0))] * need
        for i, name in enumerate(self.names):
            where = np.flatnonzero(choice == i)
            if len(where):
                source = self.sources[name]
                if len(where) > len(source.index):
                    raise InputError(f"a batch draws {len(where)} blocks from {name!r}, whose "
                                     f"train split has {len(source.index)}")  # fmt: skip
                for pos, row in zip(where, source.take(len(where)), strict=True):
                    rows[pos] = (name, row)
        self.batches += 1
        mine = rows[self.rank * micro_batch : (self.rank + 1) * micro_batch]
        blocks = np.stack([self._block(name, row) for name, row in mine]).astype(np.int64)
        t = torch.from_numpy(blocks)
        return t[:, :-1], t[:, 1:]

    def _block(self, name: str, row: np.ndarray) -> np.ndarray:
        shard, start = row
        return self.sources[name].shards[shard][start : start + self.seq_len + 1]

    @property
    def epoch(self) -> int:
        """The most epochs any source has started (the `epoch` a metrics row shows)."""
        return max(s.epoch for s in self.sources.values())

    def epochs_seen(self) -> dict[str, float]:
        """Per source: blocks drawn from it / blocks in one epoch of it."""
        return {
            name: round(s.drawn / len(s.index), 6) if len(s.index) else 0.0
            for name, s in self.sources.items()
        }

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batches": self.batches,
            "sources": {name: s.state_dict() for name, s in self.sources.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["seq_len"]) != (self.seed, self.seq_len) or set(
            state.get("sources", ())
        ) != set(self.sources):
            raise ValueError(
                "data loader state was saved with a different seed, seq_len or mixture"
            )
        self.batches = state["batches"]
        for name, s in self.sources.items():
            s.load_state_dict(state["sources"][name])


__all__ = ["Mixture", "MixtureLoader", "make_loader", "prepare", "prepare_mixture", "sources"]
