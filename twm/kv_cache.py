"""Key/value cache for incremental decoding in imagination (PERFORMANCE.md lever 3).

The released code caches each layer's *inputs* and re-projects the whole memory at every step; here
each layer's keys and values are written once into preallocated buffers, so a step projects, attends
and runs the feed-forward for its new tokens only. Attention over the cache uses the same sliding-window
and episode masks as a full pass, so hidden states equal the recompute (up to float rounding).

Contract of one pass over T new tokens (TransformerXL.forward):
  1. `source_length(T)`: reserve room; the pass attends over this many source positions, and the
     attention mask and relative distances are built for it; the new tokens are positions
     `length .. length+T-1` of them (`length`: the tokens committed before the pass);
  2. every layer i calls `layer(i).write(k_new, v_new)` and attends over the keys and values it returns;
  3. `commit(T)`: the new tokens become part of the history.
A static-shape cache changes only what 1 and 2 return: the whole buffer, so every pass has the same
shapes (what a CUDA graph of a whole rollout needs); its positions after the new tokens are future keys,
which the causal mask blocks. Otherwise (growing) the new tokens are the last T source positions."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values (layers, B, heads, capacity, head_dim). A growing cache attends over the
    committed tokens and grows by doubling if needed; a `static` one always attends over its whole buffer,
    zero-initialised so that masked (zero-probability) positions hold finite values."""

    def __init__(self, num_layers: int, batch: int, num_heads: int, head_dim: int, capacity: int,
                 device: torch.device, dtype: torch.dtype = torch.float32, static: bool = False):
        shape = (num_layers, batch, num_heads, capacity, head_dim)
        allocate = torch.zeros if static else torch.empty
        self.k = allocate(shape, device=device, dtype=dtype)
        self.v = allocate(shape, device=device, dtype=dtype)
        self.static = static
        self.length = 0  # tokens committed so far (a Python int: no host sync)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def source_length(self, new_tokens: int) -> int:
        """Make room for `new_tokens` more tokens (a growing cache copies into larger buffers when full);
        returns the number of source positions the pass over them attends over."""
        needed = self.length + new_tokens
        if self.static:
            if needed > self.capacity:
                raise ValueError(f"static K/V cache of {self.capacity} positions cannot take {needed} tokens")
            return self.capacity
        if needed > self.capacity:
            grown = max(needed, 2 * self.capacity)
            for name in ("k", "v"):
                old = getattr(self, name)
                new = old.new_empty(*old.shape[:3], grown, old.shape[4])
                new[:, :, :, :self.length] = old[:, :, :, :self.length]
                setattr(self, name, new)
        return needed

    def layer(self, i: int) -> LayerKV:
        return LayerKV(self, i)

    def commit(self, new_tokens: int) -> None:
        self.length += new_tokens


class LayerKV:
    """One layer's view of a KVCache during a pass."""

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    @property
    def query_start(self) -> int:
        """Source position of the pass's first new token."""
        return self.cache.length

    def write(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values (B, heads, T, head_dim) after the committed ones; returns
        the keys and values of every source position (B, heads, S, head_dim), views into the buffers."""
        cache, i = self.cache, self.index
        start, end = cache.length, cache.length + k_new.shape[2]
        cache.k[i, :, :, start:end] = k_new
        cache.v[i, :, :, start:end] = v_new
        if cache.static:
            return cache.k[i], cache.v[i]
        return cache.k[i, :, :, :end], cache.v[i, :, :, :end]
