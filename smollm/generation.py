"""Autoregressive generation: greedy / temperature / top-k / top-p, KV cache, left-padded batches.

Works on any model with the SmolLM forward signature; the model is passed in, never imported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from smollm.config import InputError
from smollm.decode import MAX_STOP_TOKENS, pool_for
from smollm.kvcache import KVCache


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of different lengths -> (ids, mask), both (B, T_max), padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, vocab): argmax when temperature is 0."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_args(model, T: int, max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    limit = model.config.max_seq_len
    if T + max_new_tokens > limit:
        raise InputError(
            f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context length {limit}"
        )


@torch.inference_mode()
def stream(
    model,
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    graphs: bool | None = None,
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) until max_new_tokens or every row hit EOS.

    Rows that already finished yield `pad_token_id`. With `use_cache=False` the whole sequence is
    recomputed each step (the reference the cache is tested against). `graphs` (default: on CUDA)
    decodes through a captured static-shape step (`smollm.decode`); `compile` also compiles it.
    """
    device = next(model.parameters()).device
    if not isinstance(input_ids, torch.Tensor):
        input_ids, attention_mask = left_pad(input_ids, pad_token_id, device)
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device) if attention_mask is not None else None
    B, T = input_ids.shape
    _check_args(model, T, max_new_tokens, temperature, top_k, top_p)
    if graphs is None:
        graphs = device.type == "cuda"
    if max_new_tokens == 0:
        return
    if graphs and use_cache:
        yield from _static_stream(model, input_ids, attention_mask, max_new_tokens, compile,
                                  (temperature, top_k, top_p, eos_token_id, pad_token_id, generator))  # fmt: skip
        return
    total = T + max_new_tokens
    # The mask grows as tokens are generated; with no padding at all it stays None (fast paths).
    mask = None
    if attention_mask is not None and not bool(attention_mask.all()):
        mask = torch.ones(B, total, dtype=torch.long, device=device)
        mask[:, :T] = attention_mask
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, B, total, dtype, device) if use_cache else None
    seq = torch.empty(B, total, dtype=torch.long, device=device)
    seq[:, :T] = input_ids
    n = T

    def forward(step_input: torch.Tensor) -> torch.Tensor:
        nonlocal n
        if cache is None:
            step_input = seq[:, :n]
        step_mask = mask[:, :n] if mask is not None else None
        return model(step_input, attention_mask=step_mask, cache=cache, last_only=True)[:, -1]

    def advance(token: torch.Tensor) -> torch.Tensor:
        nonlocal n
        seq[:, n] = token
        n += 1
        return forward(token[:, None])

    logits = forward(input_ids)
    yield from _sample_loop(logits, advance, B, max_new_tokens, temperature, top_k, top_p,
                            eos_token_id, pad_token_id, generator)  # fmt: skip


def _static_stream(
    model, input_ids, attention_mask, max_new_tokens, compile, sampling
) -> Iterator[torch.Tensor]:
    """`stream` through a pooled static-shape decoder (`smollm.decode`): CUDA graphs on a GPU.
    Greedy decoding picks each token inside the step (one replay per token, no host sync unless
    stop tokens can end it); sampling reads the logits back and samples here."""
    B, T = input_ids.shape
    temperature, _, _, eos_token_id, pad_token_id, _ = sampling
    stop = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    greedy = temperature <= 0.0 and len(stop) <= MAX_STOP_TOKENS
    padded = attention_mask is not None and not bool(attention_mask.all())
    with pool_for(model).acquire(model, B, T + max_new_tokens, compile, greedy) as decoder:
        logits = decoder.prefill(input_ids, attention_mask if padded else None)
        if not greedy:
            yield from _sample_loop(logits, decoder.step, B, max_new_tokens, *sampling)
            return
        token = logits.argmax(-1)
        yield token
        decoder.start(token, stop, pad_token_id)
        for _ in range(max_new_tokens - 1):
            if stop and bool(decoder.done[:B].all()):
                return
            yield decoder.next_token()[:B].clone()  # the graph rewrites its output at each replay


def _sample_loop(
    logits,
    advance,
    B,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    eos_token_id,
    pad_token_id,
    generator,
) -> Iterator[torch.Tensor]:
    """Sample, yield, and feed back until max_new_tokens or every row is done; advance(token) -> logits."""
    device = logits.device
    eos = torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []), device=device
    )
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        yield token
        done |= torch.isin(token, eos)
        if i == max_new_tokens - 1 or bool(done.all()):
            return
        logits = advance(token)


def generate(model, input_ids, max_new_tokens: int = 64, **kwargs) -> torch.Tensor:
    """Prompt followed by the generated tokens, (B, T + n_generated); see `stream` for the options."""
    if not isinstance(input_ids, torch.Tensor):
        device = next(model.parameters()).device
        input_ids, kwargs["attention_mask"] = left_pad(
            input_ids, kwargs.get("pad_token_id", 0), device
        )
    tokens = list(stream(model, input_ids, max_new_tokens, **kwargs))
    if not tokens:
        return input_ids
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
