"""Static-shape decoding for GPUs: each new token is one replay of a captured CUDA graph.

On a GPU a 135M model's eager decode step is bound by launching about a thousand small kernels
from Python, not by reading the weights (an H100 reads them in ~0.1 ms). So the step is given
fixed shapes — a cache of a bucketed length, the write position as a device tensor, attention over
the whole buffer masked by `KVCache.valid` (`SmolLM.decode_step`) — captured once per (batch,
length) bucket and replayed. `compile=True` also fuses the step's elementwise work with
torch.compile first (fewer, larger kernels; a compile per bucket). Decoders are pooled per model
and reused across generations; one generation holds one decoder at a time.

On CPU the same step runs eagerly, which is what the CPU tests check (tokens equal to the
dynamic path); `generation.stream` uses this module only on CUDA.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from smollm.kvcache import KVCache

Out = TypeVar("Out")

MIN_LENGTH = 256  # shortest cache bucket: short generations share one graph


def bucket(n: int, minimum: int = 1, cap: int | None = None) -> int:
    """The smallest power of two that is >= n and >= minimum, capped at `cap` (>= n)."""
    size = 1
    while size < n or size < minimum:
        size *= 2
    return min(size, cap) if cap is not None else size


def weights_key(model) -> tuple:
    """Where the model's weights are (storage, device, dtype). A captured graph reads them there,
    so graphs kept under another key are stale: the model was moved or cast since."""
    param = next(model.parameters())
    return param.data_ptr(), param.device, param.dtype


def capture(run: Callable[[], Out], warmup: int, pool=None) -> tuple[torch.cuda.CUDAGraph, Out]:
    """A CUDA graph of one call of `run` (its output: tensors the graph rewrites at each replay),
    after `warmup` calls on a side stream (they compile, pick kernels, create library handles).
    Graphs given one `pool` share their memory: replay them one at a time, each output used
    before the next replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = run()
    return graph, out


class StaticDecoder:
    """One cache and one captured decode step for a fixed (batch, length)."""

    def __init__(self, model, batch_size: int, max_len: int, graph: bool, compile: bool) -> None:
        param = next(model.parameters())
        self.model, self.batch_size = model, batch_size
        self.cache = KVCache(model.config, batch_size, max_len, param.dtype, param.device)
        self.cache.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=param.device)
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=param.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=param.device)
        self.fn = (
            torch.compile(model.decode_step, fullgraph=True, dynamic=False)
            if compile
            else model.decode_step
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        if graph:
            self._capture()

    @torch.no_grad()  # inference only, whoever calls (a graph captured with autograd would fail)
    def _run(self) -> torch.Tensor:
        self.cache.slot = self.slot
        try:
            return self.fn(self.tokens, self.cache)
        finally:
            self.cache.slot = None

    def _capture(self) -> None:
        self.slot.fill_(self.cache.max_len - 1)
        self.graph, self.logits = capture(self._run, warmup=3)
        self.cache.valid.zero_()  # the warm-up wrote the last slot; nothing is valid yet

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Run the prompt (B, T) through the model into the cache; logits of its last token (B, vocab)."""
        B, T = input_ids.shape
        if self.batch_size > B:  # fill the bucket with copies of the last row (dropped after)
            fill = self.batch_size - B
            input_ids = torch.cat([input_ids, input_ids[-1:].expand(fill, T)])
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask[-1:].expand(fill, T)])
        self.cache.length = 0
        self.cache.valid.zero_()
        logits = self.model(
            input_ids, attention_mask=attention_mask, cache=self.cache, last_only=True
        )
        self.cache.valid[:, :T] = True if attention_mask is None else attention_mask.bool()
        return logits[:B, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,); logits of the next (B, vocab)."""
        if self.cache.length >= self.cache.max_len:
            raise ValueError(
                f"KV cache overflow: position {self.cache.length + 1} > {self.cache.max_len}"
            )
        B = tokens.shape[0]
        self.tokens[:B, 0] = tokens
        self.tokens[B:, 0] = tokens[-1]
        self.slot.fill_(self.cache.length)
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            logits = self._run()
        self.cache.advance(1)
        return logits[:B]


class DecoderPool:
    """Decoders by (batch bucket, length bucket, compile), created on first use and then reused."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[StaticDecoder]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def acquire(
        self, model, batch_size: int, length: int, compile: bool = False
    ) -> Iterator[StaticDecoder]:
        """A decoder for at least `batch_size` rows and `length` positions, held until the block ends."""
        cap = model.config.max_seq_len
        key = (bucket(batch_size), bucket(length, MIN_LENGTH, cap), compile, *weights_key(model))
        with self._lock:
            free = self._free.setdefault(key, [])
            decoder = free.pop() if free else None
        if decoder is None:
            graph = next(model.parameters()).device.type == "cuda"
            decoder = StaticDecoder(model, key[0], key[1], graph=graph, compile=compile)
        try:
            yield decoder
        finally:
            with self._lock:
                self._free[key].append(decoder)

    def __len__(self) -> int:
        return sum(len(v) for v in self._free.values())


_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def pool_for(model) -> DecoderPool:
    """The decoder pool of one model (dropped with the model)."""
    with _POOLS_LOCK:
        if model not in _POOLS:
            _POOLS[model] = DecoderPool()
        return _POOLS[model]
