"""A preallocated key/value cache: one plain tensor buffer per keys and values, all layers."""

from __future__ import annotations

import torch

from smollm.config import ModelConfig


class KVCache:
    """Keys and values of every layer, shape (n_layers, B, n_kv_heads, max_len, head_dim).

    `length` counts the positions already written; the model advances it after each forward.
    One cache belongs to one generation: concurrent requests each allocate their own.

    Static mode (`slot` and `valid` set, see `smollm.decode`): each forward writes one position at
    the device tensor `slot` and attends over the whole buffer, masked by `valid`, so every step has
    the same shapes and can be captured in a CUDA graph.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if max_len > cfg.max_seq_len:
            raise ValueError(
                f"a cache of {max_len} positions exceeds the model's context length {cfg.max_seq_len}"
            )
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0
        self.slot: torch.Tensor | None = None  # (1,) long: the position a static step writes
        self.valid: torch.Tensor | None = None  # (B, max_len) bool: positions a query may attend to
        # One view per layer, handed to that layer: no layer index travels through the forward.
        self.layers = [LayerCache(self, i) for i in range(cfg.n_layers)]

    def advance(self, n: int) -> None:
        self.length += n


class LayerCache:
    """One layer's slice of a `KVCache`."""

    __slots__ = ("owner", "k", "v")

    def __init__(self, owner: KVCache, layer: int) -> None:
        self.owner, self.k, self.v = owner, owner.k[layer], owner.v[layer]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv, T, hd) at the current position; return the keys/values to attend to."""
        slot = self.owner.slot
        if slot is not None:  # static step: same shapes every time, `valid` masks the unwritten
            self.k.index_copy_(2, slot, k)
            self.v.index_copy_(2, slot, v)
            return self.k, self.v
        start, end = self.owner.length, self.owner.length + k.shape[2]
        if end > self.owner.max_len:
            raise ValueError(f"KV cache overflow: position {end} > cache size {self.owner.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]
