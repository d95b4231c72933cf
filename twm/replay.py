"""Replay buffer with balanced sampling (spec §9)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SeqBatch:
    """N sequences of length L from the buffer, with one context step before and the next
    observation after (spec §5). Index 0 along time is step `start-1`."""

    actions: torch.Tensor  # int64 (N, L+1): steps start-1 .. start+L-1
    rewards: torch.Tensor  # float32 (N, L+1): tanh rewards of those steps
    terminated: torch.Tensor  # bool (N, L+1)
    truncated: torch.Tensor  # bool (N, L+1)
    obs: torch.Tensor | None = None  # uint8 (N, L+2, 4, 64, 64): steps start-1 .. start+L
    logits: torch.Tensor | None = None  # float (N, L+2, C, K): cached encoder logits (pretraining)
