"""Imagination (spec §7): roll the dynamics model forward in latent space from real start states,
with the policy choosing actions, restarting trajectories whose cumulative predicted discount falls
below dyn.discount_threshold.

`Imagination` is the world model as a small environment (`reset` / `step`). With "xl" memory each step
feeds 3 new tokens after cached state: by default a true key/value cache (twm/kv_cache.py: keys and values
projected once, preallocated), or, with kv_cache=False, the released code's per-layer memory of layer
inputs that is re-projected every step. With "vanilla" each step recomputes the whole token history
without memory. The sliding-window mask limits every query to what the XL memory can hold, so all three
give the same hidden states (up to float rounding)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from twm.actor_critic import sample_action
from twm.config import Config, ConfigError
from twm.dynamics_model import DynamicsModel
from twm.observation_model import sample_latent


@dataclass
class StartStates:
    """M imagination starts, each with one real step of context (z_k, a_k, r_k, d_k) before z_{k+1}."""

    z_context: torch.Tensor  # (M, C*K)
    a_context: torch.Tensor  # int64 (M,)
    r_context: torch.Tensor  # (M,)
    d_context: torch.Tensor  # bool (M,)
    z: torch.Tensor  # (M, C*K): the first imagined state z_{k+1}


@dataclass
class Trajectory:
    """Imagined states 0..H and the H transitions between them."""

    z: torch.Tensor  # (M, H+1, C*K)
    h: torch.Tensor  # (M, H+1, D): h paired with each state, the output at the previous a token
    actions: torch.Tensor  # int64 (M, H)
    rewards: torch.Tensor  # (M, H)
    discounts: torch.Tensor  # (M, H): predicted gamma_hat
    dones: torch.Tensor  # bool (M, H): imagined episode ends (trajectory restarted after it)
    weights: torch.Tensor  # (M, H): product of gamma_hat since the (re)start; 1 for the first state

    def policy_input(self, input_h: bool) -> torch.Tensor:
        """(M, H+1, C*K [+ D]): the actor and critic input, [z, h] when input_h."""
        return torch.cat([self.z, self.h], -1) if input_h else self.z


class Imagination:
    """The dynamics model as an environment over token histories (no grad; caller sets eval mode)."""

    def __init__(self, dyn: DynamicsModel, memory: str, kv_cache: bool = True, steps: int = 16):
        if memory not in ("xl", "vanilla"):
            raise ConfigError(f"dyn.imagination_memory must be 'xl' or 'vanilla', got {memory!r}")
        self.dyn, self.xl, self.steps = dyn, memory == "xl", steps
        self.kv = self.xl and kv_cache

    def reset(self, z_context: torch.Tensor, a_context: torch.Tensor,
              d_context: torch.Tensor) -> torch.Tensor:
        """Feed the context (z_k, a_k) with empty memory; returns h_k (M, D)."""
        tokens = self.dyn.current_tokens(z_context, a_context)  # (M, 2, D)
        no_steps = d_context.new_zeros(d_context.shape[0], 0)
        self.cache = self.dyn.new_cache(tokens.shape[0], self.steps, tokens.device) if self.kv else None
        out, self.memory = self.dyn.run(tokens, no_steps, keep_memory=self.xl and not self.kv, cache=self.cache)
        self.history = tokens
        self.stop = d_context[:, None]  # (M, S): stops of the complete steps in the window
        return out[:, -1]

    def step(self, r_prev: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Feed [r_prev, z, a] (or [z, a] without reward inputs); returns h at the a token (M, D)."""
        tokens = torch.cat([self.dyn.reward_token(r_prev), self.dyn.current_tokens(z, a)], 1)
        if self.kv:
            out, _ = self.dyn.run(tokens, self.stop, cache=self.cache)
        elif self.xl:
            out, self.memory = self.dyn.run(tokens, self.stop, self.memory, keep_memory=True)
        else:
            self.history = torch.cat([self.history, tokens], 1)
            out, _ = self.dyn.run(self.history, self.stop)
        return out[:, -1]

    def end_step(self, done: torch.Tensor) -> None:
        """Record this step's done in the stop vector (with layer-input memory, kept to the steps it holds)."""
        self.stop = torch.cat([self.stop, done[:, None]], 1)
        if self.xl and not self.kv:
            self.stop = self.stop[:, -(self.dyn.memory_length + 1):]


@torch.no_grad()
def imagine(dyn: DynamicsModel, actor: Callable[[torch.Tensor], torch.Tensor], start: StartStates,
            restart_logits: torch.Tensor, config: Config, kv_cache: bool = True) -> Trajectory:
    """Imagine config.ac.horizon steps from `start` (spec §7.3).

    A row whose cumulative gamma_hat drops below the threshold is done; its next state is a fresh
    temperature-1 sample from the encoder logits of a uniformly random buffer observation. To avoid a
    host sync per step, these come from `restart_logits` (R, C, K), one pool of R buffer observations
    encoded once per rollout; each restart picks a pool entry uniformly and draws a fresh latent from it.
    kv_cache=False uses the released code's layer-input memory instead of the K/V cache (same results)."""
    horizon, threshold, input_h = config.ac.horizon, config.dyn.discount_threshold, config.ac.input_h
    world = Imagination(dyn, config.dyn.imagination_memory, kv_cache, horizon)
    h = world.reset(start.z_context, start.a_context, start.d_context)
    z, r_prev, prev_done = start.z, start.r_context, start.d_context
    cumulative_g = torch.ones_like(r_prev)
    states, hiddens, actions, rewards, discounts, dones, weights = [], [], [], [], [], [], []
    for _ in range(horizon):
        a = sample_action(actor(torch.cat([z, h], -1) if input_h else z))
        h_next = world.step(r_prev, z, a)
        logits, r, g_logit = (y.float() for y in dyn.predict(h_next))  # fp32 also under bf16 autocast
        g = torch.sigmoid(g_logit)
        w = torch.where(prev_done, torch.ones_like(cumulative_g), cumulative_g)
        cumulative_g = w * g
        d = cumulative_g < threshold
        restart = restart_logits[torch.randint(restart_logits.shape[0], d.shape, device=d.device)]
        z_next = torch.where(d[:, None], sample_latent(restart), sample_latent(logits))
        world.end_step(d)
        states.append(z), hiddens.append(h), actions.append(a), rewards.append(r)
        discounts.append(g), dones.append(d), weights.append(w)
        z, h, r_prev, prev_done = z_next, h_next, r, d
    states.append(z), hiddens.append(h)
    return Trajectory(z=torch.stack(states, 1), h=torch.stack(hiddens, 1), actions=torch.stack(actions, 1),
                      rewards=torch.stack(rewards, 1), discounts=torch.stack(discounts, 1),
                      dones=torch.stack(dones, 1), weights=torch.stack(weights, 1))
