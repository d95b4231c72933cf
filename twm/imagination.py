"""Imagination (spec §7): the world model as an environment the policy steps in latent space.

`Imagination` (in the spirit of IRIS's WorldModelEnv) owns everything between the policy's action and the
next latent state: the transformer's memory, the heads, sampling, the end-of-episode rule and restarts.
`reset(starts)` feeds each start's one real context step; `step(actions)` feeds [r_prev, z_prev, a],
reads the heads at the a token, samples z_{t+1}, and ends (and restarts) rows whose cumulative predicted
discount falls below dyn.discount_threshold. `imagine` rolls a policy through it for a whole horizon.

Memory kinds (same hidden states up to float rounding; tests/test_perf_parity.py):
  "kv_cache"      keys and values projected once into preallocated buffers (twm/kv_cache.py), the default;
                  `static` (runtime.static_imagination) attends over the whole buffer at every step, with
                  the not yet written positions masked, so every step has the same shapes and a whole
                  rollout can be captured as one CUDA graph (tests/test_static_shapes.py);
  "layer_inputs"  the released code's per-layer memory of layer inputs, re-projected every step (parity
                  checks and benchmarks only);
  "vanilla"       no memory: the whole token history is recomputed every step (the paper's runtime
                  comparison, and attention maps over every token)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from twm.config import Config, ConfigError
from twm.dynamics_model import DynamicsModel
from twm.observation_model import sample_latent

MEMORY_KINDS = ("kv_cache", "layer_inputs", "vanilla")
_CONFIG_MEMORY = {"xl": "kv_cache", "vanilla": "vanilla"}  # dyn.imagination_memory -> memory kind


# ------------------------------------------------------------------------------- start states
@dataclass
class StartStates:
    """M imagination starts, each with one real step of context (z_k, a_k, r_k, d_k) before z_{k+1}."""

    z_context: torch.Tensor  # (M, C*K)
    a_context: torch.Tensor  # int64 (M,)
    r_context: torch.Tensor  # (M,)
    d_context: torch.Tensor  # bool (M,)
    z: torch.Tensor  # (M, C*K): the first imagined state z_{k+1}

    def select(self, index: torch.Tensor) -> StartStates:
        """The starts at `index` (M',)."""
        return StartStates(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def repeat(self, times: int) -> StartStates:
        """Each start `times` times in a row (independent imagined samples from the same start)."""
        return StartStates(**{f.name: getattr(self, f.name).repeat_interleave(times, 0) for f in fields(self)})


def start_candidates(z: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                     dones: torch.Tensor) -> StartStates:
    """All N*L starts of a world-model window (spec §7.1): z_0..z_L (N, L+1, C*K) and the real actions,
    rewards and stops of steps 0..L (N, L+1); start n*L + k pairs (z_k, a_k, r_k, d_k) with z_{k+1}."""
    L = z.shape[1] - 1
    return StartStates(z_context=z[:, :L].flatten(0, 1), a_context=actions[:, :L].flatten(),
                       r_context=rewards[:, :L].flatten(), d_context=dones[:, :L].flatten(),
                       z=z[:, 1:].flatten(0, 1))


# ------------------------------------------------------------------------------------ restarts
class RestartPool:
    """Fresh start latents for imagined episode ends: a temperature-1 sample from the encoder logits of a
    uniformly chosen entry of a pool (R, C, K) of buffer observations encoded once per rollout, so that a
    restart needs no host sync (rows that do not restart ignore their draw)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, done: torch.Tensor) -> torch.Tensor:
        """done (M,) -> (M, C*K)."""
        pick = torch.randint(self.logits.shape[0], done.shape, device=done.device)
        return sample_latent(self.logits[pick])


# --------------------------------------------------------------------------------- the world
class Imagination:
    """The dynamics model as a batched environment over latent states (no grad; the caller sets eval mode).

    restart(done (M,)) -> (M, C*K) gives fresh states for rows that end; `sample(logits (M, C, K))` draws
    z_{t+1} (a temperature-1 sample; replays pass recorded draws). With `terminal_discount` a step ends
    when its own gamma_hat is below it (figures: long rollouts), instead of the cumulative rule of training.
    With `need_weights` every step's per-layer attention probabilities and mask are kept in `attention`.
    `static` (default runtime.static_imagination) uses a static-shape K/V cache sized for the config's horizon."""

    def __init__(self, dyn: DynamicsModel, config: Config, restart: Callable[[torch.Tensor], torch.Tensor], *,
                 memory: str | None = None, sample: Callable[[torch.Tensor], torch.Tensor] = sample_latent,
                 terminal_discount: float | None = None, need_weights: bool = False, static: bool | None = None):
        memory = _CONFIG_MEMORY.get(config.dyn.imagination_memory) if memory is None else memory
        if memory not in MEMORY_KINDS:
            raise ConfigError(f"imagination memory must be one of {MEMORY_KINDS} (dyn.imagination_memory "
                              f"'xl' or 'vanilla'), got {memory!r}")
        self.static = config.runtime.static_imagination if static is None else static
        if self.static and memory != "kv_cache":
            raise ConfigError(f"static-shape imagination needs the K/V cache, not the {memory!r} memory")
        self.dyn, self.memory, self.restart, self.sample = dyn, memory, restart, sample
        self.horizon, self.threshold = config.ac.horizon, config.dyn.discount_threshold
        self.terminal_discount, self.need_weights = terminal_discount, need_weights
        self.dtype = dyn.transformer.u.dtype  # heads and h in the model's dtype, also under bf16 autocast
        self.attention: list[tuple[list[torch.Tensor], torch.Tensor]] = []  # per step: (probs per layer, mask)

    def reset(self, start: StartStates) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed each start's context (z_k, a_k) with empty memory; returns the first state z_{k+1} (M, C*K)
        and h_k (M, D), the policy's input."""
        tokens = self.dyn.current_tokens(start.z_context, start.a_context)  # (M, 2, D)
        M = tokens.shape[0]
        self.past = (self.dyn.new_cache(M, self.horizon, tokens.device, self.static)
                     if self.memory == "kv_cache" else None)
        if self.static:  # (M, H+1): the stops of the context and every imagined step, filled in as they happen
            self.stop = start.d_context.new_zeros(M, self.horizon + 1)
            self.stop[:, 0] = start.d_context
            out = self.dyn.run(tokens, self.stop[:, :-1], self.past)
        else:
            no_steps = start.d_context.new_zeros(M, 0)
            out = self.dyn.run(tokens, no_steps, self.past, keep_memory=self.memory == "layer_inputs")
            self.stop = start.d_context[:, None]  # (M, S): stops of the complete steps in the window
        if self.memory == "layer_inputs":
            self.past = out.memory
        self.history = tokens  # the whole token history ("vanilla")
        self.t = 0  # imagined steps taken
        self.z, self.h = start.z, out.hidden[:, -1].to(self.dtype)
        self.r_prev, self.prev_done = start.r_context.to(self.dtype), start.d_context
        self.cumulative_g = torch.ones_like(self.r_prev)
        self.weight = torch.ones_like(self.r_prev)
        return self.z, self.h

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
        """Take actions (M,) in the current states. Returns the next state z_{t+1} (a fresh start where the
        step ended an episode), the predicted reward r_t, discount gamma_hat_t, done d_t and h_t (the output at
        the a token, the policy's h for z_{t+1}). `weight` is then the loss weight of the state acted in: the
        product of gamma_hat since the trajectory (re)started, 1 for its first state."""
        dyn = self.dyn
        tokens = torch.cat([dyn.reward_token(self.r_prev), dyn.current_tokens(self.z, actions)], 1)
        if self.memory == "vanilla":
            self.history = torch.cat([self.history, tokens], 1)
            out = dyn.run(self.history, self.stop, need_weights=self.need_weights)
        else:  # the last stop of a static buffer is the step no pass attends over
            stop = self.stop[:, :-1] if self.static else self.stop
            out = dyn.run(tokens, stop, self.past, keep_memory=self.memory == "layer_inputs",
                          need_weights=self.need_weights)
            if self.memory == "layer_inputs":
                self.past = out.memory
        if self.need_weights:
            self.attention.append((out.attention, out.mask))
        h = out.hidden[:, -1]
        logits, reward, discount_logit = (y.to(self.dtype) for y in dyn.predict(h))
        discount = torch.sigmoid(discount_logit)

        # End of an imagined episode (spec §7.3.4-5): weights restart at 1 after a done.
        self.weight = torch.where(self.prev_done, torch.ones_like(self.cumulative_g), self.cumulative_g)
        self.cumulative_g = self.weight * discount
        if self.terminal_discount is None:
            done = self.cumulative_g < self.threshold
        else:
            done = discount < self.terminal_discount
        z_next = torch.where(done[:, None], self.restart(done), self.sample(logits))
        self.t += 1
        if self.static:
            self.stop[:, self.t] = done
        else:
            self.stop = torch.cat([self.stop, done[:, None]], 1)
        if self.memory == "layer_inputs":  # the stops of the steps the memory still holds
            self.stop = self.stop[:, -(dyn.memory_length + 1):]
        self.z, self.h, self.r_prev, self.prev_done = z_next, h.to(self.dtype), reward, done
        return z_next, reward, discount, done, self.h


# ------------------------------------------------------------------------------------ rollouts
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
        return policy_input(self.z, self.h, input_h)


def policy_input(z: torch.Tensor, h: torch.Tensor, input_h: bool) -> torch.Tensor:
    """The actor and critic input: z, or [z, h] with ac.input_h."""
    return torch.cat([z, h], -1) if input_h else z


class FixedActions:
    """A policy that plays given actions (M, H) or (H,) (every row alike), one column per call."""

    def __init__(self, actions: torch.Tensor):
        self.actions, self.t = actions, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        column = self.actions[..., self.t]
        self.t += 1
        return column.expand(x.shape[0])


@torch.no_grad()
def imagine(world: Imagination, policy: Callable[[torch.Tensor], torch.Tensor], start: StartStates, horizon: int,
            input_h: bool) -> Trajectory:
    """Roll `policy` (policy input (M, in) -> actions (M,)) through `world` for `horizon` steps from `start`."""
    z, h = world.reset(start)
    states, hiddens, actions, rewards, discounts, dones, weights = [z], [h], [], [], [], [], []
    for _ in range(horizon):
        a = policy(policy_input(z, h, input_h))
        z, r, g, d, h = world.step(a)
        states.append(z), hiddens.append(h), actions.append(a), rewards.append(r)
        discounts.append(g), dones.append(d), weights.append(world.weight)
    return Trajectory(z=torch.stack(states, 1), h=torch.stack(hiddens, 1), actions=torch.stack(actions, 1),
                      rewards=torch.stack(rewards, 1), discounts=torch.stack(discounts, 1),
                      dones=torch.stack(dones, 1), weights=torch.stack(weights, 1))
