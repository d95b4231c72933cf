"""Replay buffer with balanced sampling (spec §9).

The buffer holds every transition of the run (no eviction). Index i stores the frame stack obs[i],
the action taken there, its tanh reward and its terminated/truncated flags; obs[size] is always the
current, not-yet-acted-on observation. Visit counts v_i per possible sequence start drive the
balanced sampler p = softmax(-v / tau); tau = inf is exactly uniform.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
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


class ReplayBuffer:
    """All transitions of one run, stored on `device` (observations as uint8)."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], device: torch.device | str = "cpu"):
        self.capacity = capacity
        self.device = torch.device(device)
        self.obs = torch.zeros((capacity + 1, *obs_shape), dtype=torch.uint8, device=self.device)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.truncated = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.visits = torch.zeros(capacity, dtype=torch.long)  # per sequence start, on the CPU
        self.size = 0

    # ------------------------------------------------------------------------------- writing
    def set_current_obs(self, obs) -> None:
        """Store the observation the agent acts on next (after reset, or the first one)."""
        self.obs[self.size] = torch.as_tensor(obs, device=self.device)

    def append(self, action: int, reward: float, terminated: bool, truncated: bool, next_obs) -> None:
        """Record one env step; `next_obs` is the reset observation if the step ended an episode."""
        if self.size >= self.capacity:
            raise RuntimeError(f"replay buffer is full ({self.capacity} transitions)")
        i = self.size
        self.actions[i] = action
        self.rewards[i] = reward
        self.terminated[i] = terminated
        self.truncated[i] = truncated
        self.obs[i + 1] = torch.as_tensor(next_obs, device=self.device)
        self.size += 1

    def mark_truncated_last(self) -> None:
        """Turn the last transition into an episode boundary (used when a resumed run restarts
        its environment, so no sequence pretends the old and new game are continuous)."""
        if self.size > 0:
            self.truncated[self.size - 1] = True

    # ------------------------------------------------------------------------------ sampling
    def sample_starts(self, n: int, length: int, temperature: float) -> torch.Tensor:
        """n distinct sequence starts from softmax(-v/tau) (uniform for tau = inf); counts visits."""
        num_starts = self.size - length + 1
        if n > num_starts:
            raise ValueError(f"cannot draw {n} distinct starts from {num_starts} (buffer size {self.size})")
        if math.isinf(temperature):
            probs = torch.ones(num_starts)
        else:
            probs = torch.softmax(-self.visits[:num_starts].double() / temperature, dim=0)
        starts = torch.multinomial(probs, n, replacement=False)  # (n,)
        self.visits.index_add_(0, starts, torch.ones_like(starts))
        return starts

    def uniform_epoch(self, length: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Pretraining loader: non-overlapping starts offset, offset+L, ... < size-L with a random
        offset in [0, L-1], shuffled, in batches; visit counts are not touched (spec §9)."""
        offset = int(torch.randint(length, ()).item())
        starts = torch.arange(offset, self.size - length, length)
        starts = starts[torch.randperm(len(starts))]
        yield from starts.split(batch_size)

    def sample_obs(self, n: int) -> torch.Tensor:
        """n uniformly random stored observations (imagination restarts), uint8 (n, 4, 64, 64)."""
        index = torch.randint(self.size, (n,), device=self.device)
        return self.obs[index]

    def gather(self, starts: torch.Tensor, length: int, *, logits: torch.Tensor | None = None) -> SeqBatch:
        """Sequences start..start+L-1 with the context step start-1 and the next observation.

        At start = 0 the context observation repeats obs[0], with action 0, reward 0 and the
        flags of index 0 (spec §9). With `logits` (cached encoder logits for obs indices
        0..size) the batch carries logits instead of pixels.
        """
        starts = starts.to(self.device)
        steps = starts[:, None] + torch.arange(-1, length, device=self.device)  # (N, L+1)
        first = steps < 0
        clamped = steps.clamp(min=0)
        actions = self.actions[clamped].masked_fill(first, 0)
        rewards = self.rewards[clamped].masked_fill(first, 0.0)
        obs_index = torch.cat([clamped, (starts + length)[:, None]], dim=1)  # (N, L+2)
        batch = SeqBatch(actions, rewards, self.terminated[clamped], self.truncated[clamped])
        if logits is None:
            batch.obs = self.obs[obs_index]
        else:
            batch.logits = logits[obs_index.to(logits.device)]
        return batch

    # ---------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, torch.Tensor | int]:
        n = self.size
        return {
            "size": n,
            "obs": self.obs[: n + 1].cpu(),
            "actions": self.actions[:n].cpu(),
            "rewards": self.rewards[:n].cpu(),
            "terminated": self.terminated[:n].cpu(),
            "truncated": self.truncated[:n].cpu(),
            "visits": self.visits.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        if n > self.capacity or state["obs"].shape[1:] != self.obs.shape[1:]:
            raise ValueError(f"buffer checkpoint of size {n} does not fit capacity {self.capacity}")
        self.size = n
        self.obs[: n + 1] = state["obs"].to(self.device)
        self.actions[:n] = state["actions"].to(self.device)
        self.rewards[:n] = state["rewards"].to(self.device)
        self.terminated[:n] = state["terminated"].to(self.device)
        self.truncated[:n] = state["truncated"].to(self.device)
        self.visits.copy_(state["visits"])
