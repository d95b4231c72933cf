"""The TWM agent (spec §5-§8, §10.2): observation model phi, dynamics model psi, actor theta and
critic xi with their four Adam optimizers, and the update steps the training loop calls. Metric dicts
hold 0-dim tensors (no host syncs here); the caller checks and logs them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import nn

from twm.actor_critic import Actor, Critic, actor_loss, critic_loss, gae, policy_entropy, sample_action
from twm.config import Config, ConfigError
from twm.dynamics_model import DynamicsModel, dynamics_loss
from twm.graphs import StaticGraph
from twm.imagination import Imagination, RestartPool, StartStates, Trajectory, imagine, start_candidates
from twm.observation_model import (
    ObservationModel,
    consistency_loss,
    decoder_loss,
    encoder_entropy_loss,
    one_hot_latent,
    sample_index,
    sample_latent,
)
from twm.replay import SeqBatch

_ENCODE_CHUNK = 1024
Heads = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # next-latent logits, reward mean, discount logit


@dataclass
class WorldModelPass:
    """What a world-model update computes before its optimiser steps (spec §5)."""

    context_logits: torch.Tensor  # (N, C, K) encoder logits of o_0 (eval mode, no grad)
    logits: torch.Tensor  # (N, L, C, K) encoder logits of o_1..o_L, with grad
    next_logits: torch.Tensor  # (N, C, K) encoder logits of o_{L+1} (eval mode, no grad)
    z: torch.Tensor  # (N, L+1, C*K) z_0..z_L, detached: the dynamics input; z_1..z_L were decoded
    targets: torch.Tensor  # (N, L, C, K) latent targets: encoder logits of o_2..o_{L+1}
    decoded: torch.Tensor  # (N, L, 4, 64, 64) decoder means for o_1..o_L
    h: torch.Tensor  # (N, L+1, D) h_0..h_L
    latent_logits: torch.Tensor  # (N, L+1, C, K) the heads' outputs for h_0..h_L
    reward_mean: torch.Tensor  # (N, L+1)
    discount_logit: torch.Tensor  # (N, L+1)
    obs_loss: torch.Tensor  # decoder + entropy hinge + consistency, for phi
    dyn_loss: torch.Tensor  # latent + reward + discount, for psi
    metrics: dict[str, torch.Tensor]


@dataclass
class ActorCriticPass:
    """What an actor-critic update computes before its optimiser steps (spec §8)."""

    values: torch.Tensor  # (M, H+1) V(x_0..x_H) of the current critic, no grad: the targets' values
    advantages: torch.Tensor  # (M, H) GAE(lambda)
    returns: torch.Tensor  # (M, H) lambda-returns
    critic_values: torch.Tensor  # (M, H) V(x_0..x_{H-1}) with grad
    actor_logits: torch.Tensor  # (M, H, A)
    critic_loss: torch.Tensor
    actor_losses: dict[str, torch.Tensor]


@contextmanager
def eval_mode(*modules: nn.Module):
    """Temporarily put modules in eval mode (dropout off), restoring their previous mode."""
    previous = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in zip(modules, previous, strict=True):
            m.train(was_training)


class Agent(nn.Module):
    """All learned parts of TWM and their optimizers."""

    def __init__(self, config: Config, num_actions: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.config, self.num_actions, self.device = config, num_actions, torch.device(device)
        self.obs_model = ObservationModel(config)
        self.dyn_model = DynamicsModel(config, num_actions)
        self.actor = Actor(config, num_actions)
        self.critic = Critic(config)
        self.to(self.device)
        self._configure_runtime(config.runtime)
        self.capturable = self.device.type == "cuda"
        self._graphs: dict[str, StaticGraph] = {}

        def adam(params: Iterable[nn.Parameter], lr: float, eps: float, weight_decay: float) -> torch.optim.Adam:
            # Coupled L2 weight decay (Adam, not AdamW), betas (0.9, 0.999), no schedule (spec §6). The fused
            # kernel does the same update in one pass over all tensors (tests/test_perf_parity.py); on CUDA it
            # is capturable (its step counts live on the device anyway, so the numbers are the same).
            return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True,
                                    capturable=self.capturable)

        obs, dyn, ac = config.obs, config.dyn, config.ac
        # With dyn.latent_coef 0 (the released training, spec §4.6) the latent head has no loss: it is left out
        # of psi's optimiser, so the coupled L2 decay does not move it either.
        untrained = set() if dyn.latent_coef else {id(p) for p in self.dyn_model.latent_head.parameters()}
        self.obs_optimizer = adam(self.obs_model.parameters(), obs.lr, obs.eps, obs.weight_decay)
        self.dyn_optimizer = adam([p for p in self.dyn_model.parameters() if id(p) not in untrained],
                                  dyn.lr, dyn.eps, dyn.weight_decay)
        self.actor_optimizer = adam(self.actor.parameters(), ac.actor_lr, ac.eps, ac.weight_decay)
        self.critic_optimizer = adam(self.critic.parameters(), ac.critic_lr, ac.eps, ac.weight_decay)

    # ------------------------------------------------------------------------------- runtime
    def _configure_runtime(self, runtime) -> None:
        """Precision and compile switches (docs/performance.md). "tf32" allows TF32 matmuls/convs on CUDA
        (a no-op on CPU); "bf16" runs the world-model forward passes, imagination and acting under bf16
        autocast with losses in fp32; the actor-critic updates stay fp32. `compile` compiles the encoder,
        the transformer and the actor/critic MLPs in place (parameter names unchanged); CUDA only.
        `cuda_graphs` replays the four parts of a train step as CUDA graphs (`train_step`)."""
        if runtime.precision == "tf32" and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.bf16 = runtime.precision == "bf16"
        self.cuda_graphs = runtime.cuda_graphs
        if runtime.compile:
            if self.device.type != "cuda":
                raise ConfigError("runtime.compile=True needs a CUDA device (CPU inductor miscompiles "
                                  "the embedding-MLP backward; see docs/performance.md)")
            for module in (self.obs_model.encoder, self.dyn_model.transformer, self.actor.net, self.critic.net):
                module.compile(dynamic=False)

    def autocast(self) -> torch.autocast:
        """bf16 autocast on the agent's device when runtime.precision is "bf16", else a disabled one. Under CUDA
        graphs its cache of cast weights is off (a captured cast must be recomputed at every replay)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16,
                              cache_enabled=not self.cuda_graphs)

    # ---------------------------------------------------------------------------- bookkeeping
    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype: float32 in training (also under bf16 autocast), float64 for the checks
        against the released code's numbers. Pixels, latents and losses follow it."""
        return self.critic.net[0].weight.dtype

    def param_counts(self) -> dict[str, int]:
        counts = {name: sum(p.numel() for p in module.parameters())
                  for name, module in (("observation", self.obs_model), ("dynamics", self.dyn_model),
                                       ("actor", self.actor), ("critic", self.critic))}
        counts["total"] = sum(counts.values())
        return counts

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"observation": self.obs_optimizer, "dynamics": self.dyn_optimizer,
                "actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def optimizer_state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self._optimizers().items()}

    def load_optimizer_state_dict(self, state: dict) -> None:
        """Load the four optimizers' states (from any device); captured graphs are dropped, since they hold the
        replaced state tensors, and are captured again from the next train steps."""
        for name, opt in self._optimizers().items():
            opt.load_state_dict(state[name])
            for group in opt.param_groups:
                group["capturable"] = self.capturable
        self._graphs.clear()

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> torch.Tensor:
        """zero_grad, backward, clip this optimizer's own parameters, step; returns the grad norm."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        optimizer.step()
        return grad_norm

    def _on_device(self, batch: SeqBatch) -> SeqBatch:
        """The batch on the agent's device, its float tensors (rewards, logits) in the agent's dtype (a no-op
        when they already are)."""
        def move(x: torch.Tensor) -> torch.Tensor:
            x = x.to(self.device, non_blocking=True)
            return x.to(self.dtype) if x.is_floating_point() else x

        return replace(batch, **{f.name: move(getattr(batch, f.name))
                                 for f in fields(batch) if getattr(batch, f.name) is not None})

    def _pixels(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.to(self.device, non_blocking=True).to(self.dtype).div_(255.0)

    # ------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def encode_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 (K, 4, 64, 64) -> encoder logits (K, C, K), in chunks, eval mode."""
        with eval_mode(self.obs_model), self.autocast():
            chunks = [self.obs_model.encode(self._pixels(chunk)) for chunk in obs.split(_ENCODE_CHUNK)]
        return torch.cat(chunks).to(self.dtype)

    # ---------------------------------------------------------------------- observation model
    def _reconstruct(self, o: torch.Tensor, index: torch.Tensor | None = None
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode frames o (..., 4, 64, 64), draw one straight-through latent (or use the class indices
        `index` (..., C)), decode it; returns metrics, decoder NLL + entropy hinge, logits, the latent and
        the decoded means."""
        cfg = self.config.obs
        with self.autocast():
            logits = self.obs_model.encode(o).to(self.dtype)
        z = one_hot_latent(logits, sample_index(logits) if index is None else index, straight_through=True)
        with self.autocast():
            mean = self.obs_model.decode(z).to(self.dtype)
        dec = cfg.decoder_coef * decoder_loss(o, mean)
        ent, h_norm = encoder_entropy_loss(logits, cfg.entropy_coef, cfg.entropy_threshold)
        metrics = {"obs/decoder_loss": dec.detach(), "obs/entropy_loss": ent.detach(),
                   "obs/entropy": h_norm.detach()}
        return metrics, dec + ent, logits, z, mean

    def pretrain_obs_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One phi step on frame stacks uint8 (K, 4, 64, 64): decoder + entropy hinge (spec §10.2.1)."""
        self.obs_model.train()
        metrics, loss, *_ = self._reconstruct(self._pixels(obs))
        metrics["obs/grad_norm"] = self._step(self.obs_optimizer, loss, self.config.obs.grad_clip)
        metrics["obs/loss"] = loss.detach()
        return metrics

    # ------------------------------------------------------------------------- dynamics model
    def _dynamics_pass(self, z: torch.Tensor, batch: SeqBatch,
                       targets: torch.Tensor) -> tuple[torch.Tensor, Heads, dict[str, torch.Tensor]]:
        """Dynamics forward on z_0..z_L (N, L+1, C*K), train mode, and the dynamics loss (spec §5 steps 3-4)
        against the latent targets (N, L, C, K). Returns h_0..h_L, the three heads' outputs for them
        (N, L+1, ...) and the loss dict."""
        L = z.shape[1] - 1
        dones = batch.terminated | batch.truncated  # (N, L+1)
        self.dyn_model.train()
        with self.autocast():
            h = self.dyn_model(z.detach(), batch.actions, batch.rewards[:, :L], dones[:, :L])  # (N, L+1, D)
            latent_logits, reward_mean, discount_logit = (y.to(self.dtype) for y in self.dyn_model.predict(h))
        losses = dynamics_loss(latent_logits[:, 1:], reward_mean[:, 1:], discount_logit[:, 1:], targets,
                               batch.rewards[:, 1:], batch.terminated[:, 1:], dones[:, 1:], self.config)
        return h, (latent_logits, reward_mean, discount_logit), losses

    def pretrain_dyn_step(self, batch: SeqBatch) -> dict[str, torch.Tensor]:
        """One psi step on cached encoder logits (N, L+2, C, K), encoder frozen (spec §10.2.3)."""
        batch = self._on_device(batch)
        logits = batch.logits
        L = logits.shape[1] - 2
        z = sample_latent(logits[:, :L + 1])  # stochastic samples of z_0..z_L
        _, _, losses = self._dynamics_pass(z, batch, logits[:, 2:])
        metrics = {k: v.detach() for k, v in losses.items()}
        metrics["dyn/grad_norm"] = self._step(self.dyn_optimizer, losses["dyn/loss"], self.config.dyn.grad_clip)
        return metrics

    # ------------------------------------------------------------------------------ main step
    def train_step(self, batch: SeqBatch,
                   sample_start_obs: Callable[[int], torch.Tensor]) -> dict[str, torch.Tensor]:
        """One world-model update (phi and psi) on batch.obs (N, L+2, 4, 64, 64), then imagination from
        ac.batch_size of the N*L start candidates, one critic step, one actor step (spec §5, §7, §8).
        With runtime.cuda_graphs each of the four parts is a StaticGraph (twm/graphs.py): the same calls in
        the same order, on static buffers; the returned metrics are then overwritten by the next step."""
        metrics, start = self.phase("world_model_step")(self._on_device(batch))
        restart_obs = sample_start_obs(self.config.ac.batch_size).to(self.device, non_blocking=True)
        restart_logits = self.phase("encode_logits")(restart_obs)
        trajectory = self.phase("imagine_trajectory")(start, restart_logits)
        return {**metrics, **self.phase("ac_update")(trajectory)}

    def phase(self, name: str) -> Callable:
        """One part of a train step ("world_model_step", "encode_logits", "imagine_trajectory", "ac_update"):
        the method itself, or under runtime.cuda_graphs its StaticGraph (made on first use)."""
        if not self.cuda_graphs:
            return getattr(self, name)
        if name not in self._graphs:
            self._graphs[name] = StaticGraph(getattr(self, name), self.device)
        return self._graphs[name]

    def world_model_pass(self, batch: SeqBatch, z_index: torch.Tensor | None = None) -> WorldModelPass:
        """The forward passes and losses of a world-model update (spec §5) on an on-device batch.

        One straight-through sample per step, as in the released code: it is decoded, and (detached) it is
        the dynamics input and the imagination start. z_index (N, L+1, C) replays recorded class draws
        for z_0..z_L (the checks against the released code); None draws them."""
        cfg = self.config
        o = self._pixels(batch.obs)
        L = o.shape[1] - 2

        # Context and next-observation encodings without grad, in eval mode.
        with torch.no_grad(), eval_mode(self.obs_model), self.autocast():
            context_logits = self.obs_model.encode(o[:, 0]).to(self.dtype)  # (N, C, K)
            next_logits = self.obs_model.encode(o[:, L + 1]).to(self.dtype)
        context_index = sample_index(context_logits) if z_index is None else z_index[:, 0]
        z_context = one_hot_latent(context_logits, context_index)  # (N, C*K)
        self.obs_model.train()
        metrics, obs_loss, logits, z_window, decoded = self._reconstruct(
            o[:, 1:L + 1], None if z_index is None else z_index[:, 1:])
        z = torch.cat([z_context[:, None], z_window.detach()], 1)  # (N, L+1, C*K)
        targets = torch.cat([logits[:, 1:], next_logits[:, None]], 1)
        h, heads, dyn_losses = self._dynamics_pass(z, batch, targets)
        consistency = consistency_loss(logits, heads[0][:, :-1], cfg.obs.consistency_direction)
        obs_loss = obs_loss + cfg.obs.consistency_coef * consistency
        metrics.update({k: v.detach() for k, v in dyn_losses.items()})
        metrics["obs/consistency_loss"] = consistency.detach()
        metrics["obs/loss"] = obs_loss.detach()
        return WorldModelPass(context_logits=context_logits, logits=logits, next_logits=next_logits, z=z,
                              targets=targets, decoded=decoded, h=h, latent_logits=heads[0], reward_mean=heads[1],
                              discount_logit=heads[2], obs_loss=obs_loss, dyn_loss=dyn_losses["dyn/loss"],
                              metrics=metrics)

    def world_model_step(self, batch: SeqBatch,
                         z_index: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], StartStates]:
        """The psi and phi updates of a train step (spec §5) on an on-device batch; returns their metrics and
        the M imagination starts drawn uniformly without replacement from the N*L candidates. z_index: see
        `world_model_pass`."""
        cfg = self.config
        wm = self.world_model_pass(batch, z_index)
        metrics = wm.metrics
        metrics["dyn/grad_norm"] = self._step(self.dyn_optimizer, wm.dyn_loss, cfg.dyn.grad_clip)
        metrics["obs/grad_norm"] = self._step(self.obs_optimizer, wm.obs_loss, cfg.obs.grad_clip)
        candidates = start_candidates(wm.z, batch.actions, batch.rewards, batch.terminated | batch.truncated)
        choice = torch.randperm(candidates.z.shape[0], device=self.device)[:cfg.ac.batch_size]
        return metrics, candidates.select(choice)

    def imagine_trajectory(self, start: StartStates, restart_logits: torch.Tensor,
                           memory: str | None = None) -> Trajectory:
        """Imagination (spec §7) with the dynamics model and actor in eval mode, restarts from the encoder
        logits `restart_logits` (R, C, K) of buffer observations; `memory` is dyn.imagination_memory's kind
        unless given (see twm.imagination)."""
        world = Imagination(self.dyn_model, self.config, RestartPool(restart_logits), memory=memory)
        with eval_mode(self.dyn_model, self.actor), self.autocast():
            return imagine(world, lambda x: sample_action(self.actor(x)), start, self.config.ac.horizon,
                           self.config.ac.input_h)

    # ---------------------------------------------------------------------------- actor-critic
    def ac_targets(self, x: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor,
                   dones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values V_0..V_H of the current critic (eval, no grad) and GAE(lambda) advantages and returns."""
        with torch.no_grad(), eval_mode(self.critic):
            values = self.critic(x)  # (M, H+1)
        advantages, returns = gae(rewards, values, discounts, dones, self.config.ac.gae_lambda)
        return values, advantages, returns

    def actor_critic_pass(self, trajectory: Trajectory) -> ActorCriticPass:
        """Targets and both losses on an imagined trajectory (spec §8), before any optimiser step."""
        x = trajectory.policy_input(self.config.ac.input_h)
        values, advantages, returns = self.ac_targets(x, trajectory.rewards, trajectory.discounts,
                                                      trajectory.dones)
        critic_values = self.critic(x[:, :-1])
        actor_logits = self.actor(x[:, :-1])
        return ActorCriticPass(
            values=values, advantages=advantages, returns=returns, critic_values=critic_values,
            actor_logits=actor_logits, critic_loss=critic_loss(critic_values, returns, trajectory.weights),
            actor_losses=actor_loss(actor_logits, trajectory.actions, advantages, trajectory.weights, self.config))

    def ac_update(self, trajectory: Trajectory) -> dict[str, torch.Tensor]:
        """Critic step, then actor step, on an imagined trajectory (spec §8)."""
        ac = self.actor_critic_pass(trajectory)
        clip = self.config.ac.grad_clip
        metrics = {"critic/loss": ac.critic_loss.detach(),
                   "critic/grad_norm": self._step(self.critic_optimizer, ac.critic_loss, clip),
                   "actor/grad_norm": self._step(self.actor_optimizer, ac.actor_losses["actor/loss"], clip)}
        metrics.update({k: v.detach() for k, v in ac.actor_losses.items()})
        metrics.update({"critic/value": ac.values.mean(), "critic/return": ac.returns.mean(),
                        "imag/reward": trajectory.rewards.mean(),
                        "imag/discount": trajectory.discounts.mean(),
                        "imag/done_frac": trajectory.dones.float().mean(), "imag/weight": trajectory.weights.mean()})
        return metrics

    def pretrain_ac_step(self, batch: SeqBatch) -> dict[str, torch.Tensor]:
        """Actor-critic on real data (spec §10.2.4): L = ac.horizon steps from cached logits (N, L+2, C, K).
        Critic: GAE regression with weights 1, where truncation also zeroes the discount; actor: pure entropy
        maximisation over all L+1 states, the bootstrap state included (the released code). Actor step, then
        critic."""
        cfg = self.config.ac
        batch = self._on_device(batch)
        logits = batch.logits
        L = logits.shape[1] - 2
        z = sample_latent(logits)  # (N, L+2, C*K): context, then states 1..L+1
        dones = (batch.terminated | batch.truncated)[:, 1:]  # (N, L)
        discounts = cfg.gamma * (~dones).to(self.dtype)
        x = z[:, 1:]
        if cfg.input_h:
            all_dones = batch.terminated | batch.truncated
            with torch.no_grad(), eval_mode(self.dyn_model):
                h = self.dyn_model(z[:, :L + 1], batch.actions, batch.rewards[:, :L], all_dones[:, :L])
            x = torch.cat([x, h], -1)  # state t pairs with h_{t-1}
        values, _, returns = self.ac_targets(x, batch.rewards[:, 1:], discounts, dones)

        h_norm = policy_entropy(self.actor(x)).mean() / math.log(self.num_actions)
        loss = -cfg.entropy_coef * h_norm
        metrics = {"actor/loss": loss.detach(), "actor/entropy": h_norm.detach(),
                   "actor/grad_norm": self._step(self.actor_optimizer, loss, cfg.grad_clip)}
        critic_values = self.critic(x[:, :-1])
        loss = critic_loss(critic_values, returns, torch.ones_like(returns))
        metrics.update({"critic/loss": loss.detach(),
                        "critic/grad_norm": self._step(self.critic_optimizer, loss, cfg.grad_clip),
                        "critic/value": values.mean(), "critic/return": returns.mean()})
        return metrics

    # ---------------------------------------------------------------------------------- acting
    def make_policy(self, num_envs: int) -> Policy:
        return Policy(self, num_envs)


class Policy:
    """Acting in real envs (collection and evaluation): z = encoder argmax of the current frame stack,
    action sampled from the actor at temperature 1 (spec §2.3, §8).

    With ac.input_h the actor also sees h_{t-1}: each env keeps its last dyn.memory_length+1 real steps
    (z, a, r, d), and every `act` recomputes the transformer over that window with the current weights
    (eval mode). Shorter histories are padded with dummy steps cut off by a stop; a fresh game (no steps
    yet) uses h = 0. This replaces the released code's observe mode with a 16-step real prefix."""

    def __init__(self, agent: Agent, num_envs: int):
        self.agent, self.num_envs = agent, num_envs
        self.input_h = agent.config.ac.input_h
        cfg, device = agent.config, agent.device
        W = cfg.dyn.memory_length + 1
        latent_dim = cfg.obs.num_categoricals * cfg.obs.num_classes
        self.z = torch.zeros(num_envs, W, latent_dim, device=device)  # oldest .. newest step
        self.a = torch.zeros(num_envs, W, dtype=torch.int64, device=device)
        self.r = torch.zeros(num_envs, W, device=device)
        self.d = torch.ones(num_envs, W, dtype=torch.bool, device=device)  # padding steps end with a stop
        self.length = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.inference_mode()
    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """uint8 (B, 4, 64, 64) -> int64 actions (B,). A numpy array gives a numpy array; a tensor (e.g. the
        replay buffer's current observation, already on the device) gives a tensor on the agent's device,
        with no copy through the host. The encoder and actor have no dropout, so they run as they are (no
        train/eval switching); the encoder takes its small-batch path."""
        agent = self.agent
        if obs.ndim != 4 or obs.shape[0] != self.num_envs:
            raise ValueError(f"expected observations ({self.num_envs}, 4, 64, 64), got {tuple(obs.shape)}")
        on_device = isinstance(obs, torch.Tensor)
        frames = obs if on_device else torch.from_numpy(np.ascontiguousarray(obs))
        with agent.autocast():
            logits = agent.obs_model.encode_for_acting(agent._pixels(frames))
        z = sample_latent(logits.float(), "argmax")  # (B, C*K)
        x = z
        if self.input_h:
            with eval_mode(agent.dyn_model):
                h = agent.dyn_model(self.z, self.a, self.r[:, :-1], self.d[:, :-1])[:, -1]
            h = torch.where((self.length > 0)[:, None], h, torch.zeros_like(h))
            x = torch.cat([z, h], -1)
        a = sample_action(agent.actor(x))
        self._last = (z, a)
        return a if on_device else a.cpu().numpy().astype(np.int64)

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        """After each env step: append (z, a, r, d) of the step just taken (tanh reward, as in the buffer)."""
        if not self.input_h or self._last is None:
            return
        z, a = self._last
        device = self.z.device
        r = torch.as_tensor(np.asarray(rewards, dtype=np.float32), device=device)
        d = torch.as_tensor(np.asarray(dones, dtype=bool), device=device)
        self.z = torch.cat([self.z[:, 1:], z[:, None]], 1)
        self.a = torch.cat([self.a[:, 1:], a[:, None]], 1)
        self.r = torch.cat([self.r[:, 1:], r[:, None]], 1)
        self.d = torch.cat([self.d[:, 1:], d[:, None]], 1)
        self.length += 1
        self._last = None

    def reset(self, index: int) -> None:
        """Env `index` starts a fresh game: forget its history."""
        if not self.input_h:
            return
        self.z[index] = 0
        self.a[index] = 0
        self.r[index] = 0
        self.d[index] = True
        self.length[index] = 0
