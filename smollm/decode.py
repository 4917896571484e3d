"""Static-shape decoding for GPUs: each new token is one replay of a captured CUDA graph.

On a GPU a 135M model's eager decode step is bound by launching about a thousand small kernels
from Python, not by reading the weights (an H100 reads them in ~0.1 ms). So the step is given
fixed shapes — a cache of a bucketed length, the write position as a device tensor, attention over
the whole buffer masked by `KVCache.valid` (`SmolLM.decode_step`) — captured once per (batch,
length) bucket and replayed. `compile=True` also fuses the step's elementwise work with
torch.compile first (fewer, larger kernels; a compile per bucket). A greedy decoder's step also
picks the token, marks rows that met a stop token and feeds the token back (`greedy_step`), so a
token is one replay and the host reads nothing back unless stop tokens can end the generation.
Decoders are pooled per model and reused across generations; one generation holds one decoder at
a time.

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
MAX_STOP_TOKENS = 8  # stop tokens a greedy graph checks (more: the token is picked on the host)
WARMUP = 3  # calls before a capture (compile, kernel choice, library handles)


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


def stopped(tokens: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """Which of tokens (B,) are one of `eos`: isin, spelled as a compare (no path with a sync)."""
    return (tokens[:, None] == eos).any(-1)


def greedy_step(model, tokens, cache, done, eos, pad) -> torch.Tensor:
    """One static decode step that also picks the greedy token and feeds it back, so that a
    captured graph of it is the whole of a greedy token: the next tokens (B,), pad in rows that
    already met a stop token (`done`, updated). The host never sees the logits."""
    logits = model.decode_step(tokens, cache)  # (B, vocab)
    token = torch.where(done, pad, logits.argmax(-1))
    done |= stopped(token, eos)
    tokens.copy_(token[:, None])  # the next step's input
    cache.slot.add_(1)  # and its position
    return token


class StaticDecoder:
    """One cache and one captured decode step for a fixed (batch, length).

    `greedy=False`: the step gives logits and the caller samples (`step`). `greedy=True`: the
    step is `greedy_step` (`start`, then `next_token`): one replay per token and nothing else,
    no host sync unless stop tokens were given."""

    def __init__(self, model, batch_size: int, max_len: int, graph: bool, compile: bool,
                 greedy: bool = False) -> None:  # fmt: skip
        param = next(model.parameters())
        self.model, self.batch_size = model, batch_size
        self.cache = KVCache(model.config, batch_size, max_len, param.dtype, param.device)
        self.cache.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=param.device)
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=param.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=param.device)
        # greedy: rows done, the stop tokens (unused places -1: never a token), the pad token
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=param.device)
        self.eos = torch.full((MAX_STOP_TOKENS,), -1, dtype=torch.long, device=param.device)
        self.pad = torch.zeros((), dtype=torch.long, device=param.device)
        step = greedy_step if greedy else type(model).decode_step
        self.fn = torch.compile(step, fullgraph=True, dynamic=False) if compile else step
        self.args = (model, self.tokens, self.cache)  # what the step reads and rewrites
        if greedy:
            self.args += (self.done, self.eos, self.pad)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None  # the captured step's output: logits, or tokens
        if graph:
            self._capture()

    @torch.no_grad()  # inference only, whoever calls (a graph captured with autograd would fail)
    def _run(self) -> torch.Tensor:
        self.cache.slot = self.slot
        try:
            return self.fn(*self.args)
        finally:
            self.cache.slot = None

    def _capture(self) -> None:
        # the warm-up calls run (a greedy step moves the slot on by one each), the capture does not
        self.slot.fill_(self.cache.max_len - WARMUP)
        self.graph, self.out = capture(self._run, warmup=WARMUP)
        self.cache.valid.zero_()  # the warm-up wrote the last slots; nothing is valid yet
        self.done.zero_()

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

    def _check_room(self) -> None:
        if self.cache.length >= self.cache.max_len:
            raise ValueError(
                f"KV cache overflow: position {self.cache.length + 1} > {self.cache.max_len}"
            )

    def _feed(self, tokens: torch.Tensor) -> None:
        """tokens (B,) as the next step's input, at the next position (rows past B: the last row's)."""
        B = tokens.shape[0]
        self.tokens[:B, 0] = tokens
        self.tokens[B:, 0] = tokens[-1]
        self.slot.fill_(self.cache.length)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,); logits of the next (B, vocab)."""
        self._check_room()
        self._feed(tokens)
        logits = self._replay()
        self.cache.advance(1)
        return logits[: tokens.shape[0]]

    def start(self, tokens: torch.Tensor, stop: list[int], pad: int) -> None:
        """Greedy decoding from the prompt's first new tokens (B,): they are fed next; rows that
        meet a token of `stop` (at most MAX_STOP_TOKENS) continue with `pad`."""
        self._feed(tokens)
        self.eos.fill_(-1)
        self.eos[: len(stop)] = torch.tensor(stop, dtype=torch.long)
        self.pad.fill_(pad)
        self.done.copy_(stopped(self.tokens[:, 0], self.eos))

    def next_token(self) -> torch.Tensor:
        """The next greedy token of every row of the bucket (batch_size,): one replay (greedy)."""
        self._check_room()
        token = self._replay()
        self.cache.advance(1)
        return token

    def _replay(self) -> torch.Tensor:
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.out


class DecoderPool:
    """Decoders by (batch bucket, length bucket, compile, greedy), created on first use and then
    reused."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[StaticDecoder]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def acquire(
        self, model, batch_size: int, length: int, compile: bool = False, greedy: bool = False
    ) -> Iterator[StaticDecoder]:
        """A decoder for at least `batch_size` rows and `length` positions, held until the block ends."""
        cap = model.config.max_seq_len
        key = (bucket(batch_size), bucket(length, MIN_LENGTH, cap), compile, greedy,
               *weights_key(model))  # fmt: skip
        with self._lock:
            free = self._free.setdefault(key, [])
            decoder = free.pop() if free else None
        if decoder is None:
            graph = next(model.parameters()).device.type == "cuda"
            decoder = StaticDecoder(model, key[0], key[1], graph, compile, greedy)
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
