"""Balanced replay sampling on the visit counts' own device (spec §9; PERFORMANCE.md lever 10).

n distinct sequence starts are drawn without replacement from p = softmax(-v / tau) (uniform for tau = inf)
and their visit counts go up by one. `torch.multinomial(p, n, replacement=False)` draws them by the
exponential-race (Gumbel-top-k) rule, keys p_i / E_i with E_i ~ Exp(1), the n largest in decreasing order,
but first checks p on the host (`.item()`: a host sync per call on CUDA). `balanced_starts` runs the same
rule without the checks: with the same generator state it returns the same starts (bit for bit on a CPU),
so its distribution is today's; on CUDA the whole draw, and the visit update, stay on the device."""

from __future__ import annotations

import math

import torch


def balanced_starts(visits: torch.Tensor, num_starts: int, n: int, temperature: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """n distinct starts in [0, num_starts) from softmax(-visits[:num_starts] / temperature), on visits'
    device (int64 (n,)); adds one visit to each, in place. The caller checks n <= num_starts (Python ints)."""
    if math.isinf(temperature):
        probs = torch.ones(num_starts, device=visits.device)
    else:
        probs = torch.softmax(-visits[:num_starts].double() / temperature, dim=0)
    keys = torch.empty_like(probs).exponential_(1, generator=generator)
    starts = torch.topk(probs / keys, n).indices  # (n,)
    visits.index_add_(0, starts, torch.ones_like(starts))
    return starts
