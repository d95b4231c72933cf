"""Key/value cache for incremental decoding in imagination (PERFORMANCE.md lever 3).

The released code caches each layer's *inputs* and re-projects the whole memory at every step; here
each layer's keys and values are written once into preallocated buffers, so a step projects, attends
and runs the feed-forward for its new tokens only. Attention over the cache uses the same sliding-window
and episode masks as a full pass, so hidden states equal the recompute (up to float rounding)."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values (layers, B, heads, capacity, head_dim); grows by doubling if needed."""

    def __init__(self, num_layers: int, batch: int, num_heads: int, head_dim: int, capacity: int,
                 device: torch.device, dtype: torch.dtype = torch.float32):
        shape = (num_layers, batch, num_heads, capacity, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # tokens written so far (a Python int: no host sync)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def reserve(self, new_tokens: int) -> None:
        """Make room for `new_tokens` more tokens, copying into larger buffers when full."""
        needed = self.length + new_tokens
        if needed <= self.capacity:
            return
        grown = max(needed, 2 * self.capacity)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:3], grown, old.shape[4])
            new[:, :, :, :self.length] = old[:, :, :, :self.length]
            setattr(self, name, new)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(k buffer, v buffer, write position) for layer i; views into the preallocated storage."""
        return self.k[i], self.v[i], self.length
