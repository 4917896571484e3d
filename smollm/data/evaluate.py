"""Validation metrics: loss, perplexity and bits per byte (comparable across tokenizers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from smollm.data.loader import gather, validation_blocks
from smollm.data.mixture import Mixture
from smollm.data.tokencache import TokenCache


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats per token over every target
    perplexity: float
    bits_per_byte: float  # nats of text tokens / ln 2 / their UTF-8 bytes (special tokens excluded)
    tokens: int
    # a mixture's: each source's own result; loss and bits_per_byte above are their weighted mean
    sources: dict[str, EvalResult] = field(default_factory=dict)


def evaluate(
    model,
    cache,
    seq_len: int,
    batch_size: int = 8,
    max_blocks: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Evaluate `model` on the fixed validation blocks of `cache`; of a mixture, on each source's
    (up to `max_blocks` each), averaged with the mixture's validation weights."""
    if not isinstance(cache, Mixture):
        return _evaluate(model, cache, seq_len, batch_size, max_blocks, autocast_dtype)
    each = {name: _evaluate(model, c, seq_len, batch_size, max_blocks, autocast_dtype)
            for name, c in cache.caches.items()}  # fmt: skip
    total = sum(cache.val_weights.values())
    w = {name: cache.val_weights.get(name, 0.0) / total for name in each}
    loss = sum(w[n] * r.loss for n, r in each.items())
    bpb = sum(w[n] * r.bits_per_byte for n, r in each.items())
    tokens = sum(r.tokens for r in each.values())
    return EvalResult(loss, math.exp(min(loss, 50.0)), bpb, tokens, each)


@torch.no_grad()
def _evaluate(
    model,
    cache: TokenCache,
    seq_len: int,
    batch_size: int,
    max_blocks: int | None,
    autocast_dtype: torch.dtype | None,
) -> EvalResult:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    index = validation_blocks(cache, seq_len, max_blocks)
    tbytes = torch.as_tensor(np.asarray(cache.meta["token_bytes"]), device=device)
    nats = text_nats = 0.0
    n_tokens = n_bytes = 0
    for start in range(0, len(index), batch_size):
        x, y = gather(cache.shards["val"], index[start : start + batch_size], seq_len)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        b = tbytes[y.flatten()]
        nats += loss.sum().item()
        text_nats += loss[b > 0].sum().item()
        n_tokens += y.numel()
        n_bytes += int(b.sum().item())
    model.train(was_training)
    mean = nats / n_tokens
    return EvalResult(
        mean, math.exp(min(mean, 50.0)), text_nats / math.log(2) / max(n_bytes, 1), n_tokens
    )
