"""Batches of packed blocks: deterministic given the seed, resumable from a small state dict.

A block is `seq_len + 1` consecutive tokens (inputs and shifted targets); consecutive blocks share
one boundary token, so every token is a target exactly once. No padding anywhere.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from smollm.config import DataConfig, InputError, SmolError
from smollm.data.corpora import resolve_corpus
from smollm.data.tokencache import TokenCache, train_documents
from smollm.data.vocab import encode_batch, endoftext_id


def block_index(shards: list[np.ndarray], seq_len: int) -> np.ndarray:
    """(n_blocks, 2) array of (shard, start) for every whole block; blocks never cross shards."""
    rows = [
        np.stack([np.full(n, i), np.arange(n) * seq_len], axis=1)
        for i, shard in enumerate(shards)
        if (n := (len(shard) - 1) // seq_len) > 0
    ]
    return np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)


def gather(
    shards: list[np.ndarray], index: np.ndarray, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, seq_len) int64 for the given block rows."""
    blocks = np.stack([shards[s][o : o + seq_len + 1] for s, o in index]).astype(np.int64)
    t = torch.from_numpy(blocks)
    return t[:, :-1], t[:, 1:]


class Epochs:
    """One split's blocks in shuffled epochs: `take(n)` hands out the next n (shard, start) rows
    of the epoch's permutation, starting the next epoch (and dropping the remainder) when fewer
    than n are left. The permutation of epoch e is seeded by (*key, e)."""

    def __init__(self, shards: list[np.ndarray], seq_len: int, key: list[int]) -> None:
        self.shards, self.key = shards, key
        self.index = block_index(shards, seq_len)
        self.epoch = self.cursor = self.drawn = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([*self.key, epoch]).permutation(len(self.index))

    def take(self, n: int) -> np.ndarray:
        if self.cursor + n > len(self._perm):  # drop the epoch's remainder, reshuffle
            self.epoch, self.cursor = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        rows = self.index[self._perm[self.cursor : self.cursor + n]]
        self.cursor += n
        self.drawn += n
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.drawn = state.get("drawn", 0)  # not recorded before mixtures
        self._perm = self._permutation(self.epoch)


class BlockLoader:
    """Shuffled training blocks, reshuffled each epoch; shards the batch by rank under DDP.

    Each call takes the next `micro_batch * world_size` blocks of the epoch's permutation and
    returns this rank's slice, so ranks never see the same block and one process with gradient
    accumulation sees exactly the blocks that several processes see together.
    """

    def __init__(
        self, cache: TokenCache, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.shards = cache.shards["train"]
        self.seq_len, self.seed, self.rank, self.world_size = seq_len, seed, rank, world_size
        self.epochs = Epochs(self.shards, seq_len, [seed])
        if len(self.epochs.index) == 0:
            raise InputError(f"the train split has fewer than seq_len + 1 = {seq_len + 1} tokens")

    def next(self, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        need = micro_batch * self.world_size
        if need > len(self.epochs.index):
            raise InputError(
                f"a batch of {need} blocks exceeds the {len(self.epochs.index)} blocks of the train split"
            )
        rows = self.epochs.take(need)
        return gather(
            self.shards, rows[self.rank * micro_batch : (self.rank + 1) * micro_batch], self.seq_len
        )

    @property
    def epoch(self) -> int:
        return self.epochs.epoch

    @property
    def blocks_per_epoch(self) -> int:
        return len(self.epochs.index)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epochs.epoch, "cursor": self.epochs.cursor, "seed": self.seed,
                "seq_len": self.seq_len}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["seq_len"]) != (self.seed, self.seq_len):
            raise ValueError("data loader state was saved with a different seed or seq_len")
        self.epochs.load_state_dict(state)


def validation_blocks(cache: TokenCache, seq_len: int, max_blocks: int | None = None) -> np.ndarray:
    """The fixed validation blocks, in order: the same for every run and variant."""
    index = block_index(cache.shards["val"], seq_len)
    if len(index) == 0:
        raise InputError(f"the validation split has fewer than seq_len + 1 = {seq_len + 1} tokens")
    return index[:max_blocks] if max_blocks else index


class StreamLoader:
    """Blocks from a corpus too large to cache, tokenised by a background worker thread.

    The order is the corpus' own; the state is the number of blocks consumed, and resuming replays
    the stream up to that point (exact, at the cost of re-tokenising what was skipped).
    """

    def __init__(
        self,
        documents: Iterator[str],
        encode,
        eot: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 64,
    ) -> None:
        self.seq_len, self.rank, self.world_size = seq_len, rank, world_size
        self.consumed = 0
        self.epoch = 0  # a stream is read once
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._worker = threading.Thread(
            target=self._produce, args=(documents, encode, eot), daemon=True
        )
        self._worker.start()

    def _produce(self, documents: Iterator[str], encode, eot: int) -> None:
        buf: list[int] = []
        try:
            for batch in _batched(documents, 64):
                for ids in encode(batch):
                    buf.extend(ids)
                    buf.append(eot)
                while len(buf) >= self.seq_len + 1:
                    self._queue.put(np.asarray(buf[: self.seq_len + 1], dtype=np.int64))
                    del buf[: self.seq_len]
        except Exception as e:  # surfaced to the consumer, not lost in the thread
            self._queue.put(e)
        self._queue.put(None)

    def _take(self) -> np.ndarray:
        item = self._queue.get()
        if item is None:
            raise SmolError(
                f"the streamed corpus ran out after {self.consumed} blocks; lower train.max_steps or train.max_tokens"
            )
        if isinstance(item, Exception):
            raise item
        return item

    def next(self, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = [self._take() for _ in range(micro_batch * self.world_size)]
        self.consumed += len(blocks)
        mine = np.stack(blocks[self.rank * micro_batch : (self.rank + 1) * micro_batch])
        t = torch.from_numpy(mine)
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for _ in range(state["consumed"] - self.consumed):
            self._take()
        self.consumed = state["consumed"]


def _batched(items: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def corpus_loader(
    cfg: DataConfig, cache: TokenCache, tok, seed: int, rank: int = 0, world: int = 1
):
    """Shuffled blocks from one corpus' cache, or (data.stream) blocks tokenised on the fly in
    corpus order. (`smollm.data.make_loader` also takes a `data.mixture`.)"""
    if not cfg.stream:
        return BlockLoader(cache, cfg.seq_len, seed, rank, world)
    docs = train_documents(
        resolve_corpus(cfg.corpus, cfg.text_field, cfg.max_docs), cfg.val_fraction
    )
    return StreamLoader(
        docs, lambda batch: encode_batch(tok, batch), endoftext_id(tok), cfg.seq_len, rank, world
    )
