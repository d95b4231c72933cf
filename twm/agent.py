"""The TWM agent (spec §5-§8, §10.2): observation model phi, dynamics model psi, actor theta and
critic xi with their four Adam optimizers, and the update steps the training loop calls. Metric dicts
hold 0-dim tensors (no host syncs here); the caller checks and logs them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import fields, replace

import numpy as np
import torch
from torch import nn

from twm.actor_critic import Actor, Critic, actor_loss, critic_loss, gae, policy_entropy, sample_action
from twm.config import Config, ConfigError
from twm.dynamics_model import DynamicsModel, dynamics_loss
from twm.imagination import StartStates, Trajectory, imagine
from twm.observation_model import (
    ObservationModel,
    consistency_loss,
    decoder_loss,
    encoder_entropy_loss,
    sample_latent,
)
from twm.replay import SeqBatch

_ENCODE_CHUNK = 1024


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

        def adam(module: nn.Module, lr: float, eps: float, weight_decay: float) -> torch.optim.Adam:
            # Coupled L2 weight decay (Adam, not AdamW), betas (0.9, 0.999), no schedule (spec §6). The fused
            # kernel does the same update in one pass over all tensors (tests/test_perf_parity.py).
            return torch.optim.Adam(module.parameters(), lr=lr, eps=eps, weight_decay=weight_decay, fused=True)

        obs, dyn, ac = config.obs, config.dyn, config.ac
        self.obs_optimizer = adam(self.obs_model, obs.lr, obs.eps, obs.weight_decay)
        self.dyn_optimizer = adam(self.dyn_model, dyn.lr, dyn.eps, dyn.weight_decay)
        self.actor_optimizer = adam(self.actor, ac.actor_lr, ac.eps, ac.weight_decay)
        self.critic_optimizer = adam(self.critic, ac.critic_lr, ac.eps, ac.weight_decay)

    # ------------------------------------------------------------------------------- runtime
    def _configure_runtime(self, runtime) -> None:
        """Precision and compile switches (docs/performance.md). "tf32" allows TF32 matmuls/convs on CUDA
        (a no-op on CPU); "bf16" runs the world-model forward passes, imagination and acting under bf16
        autocast with losses in fp32; the actor-critic updates stay fp32. `compile` compiles the encoder,
        the transformer and the actor/critic MLPs in place (parameter names unchanged); CUDA only."""
        if runtime.precision == "tf32" and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.bf16 = runtime.precision == "bf16"
        if runtime.compile:
            if self.device.type != "cuda":
                raise ConfigError("runtime.compile=True needs a CUDA device (CPU inductor miscompiles "
                                  "the embedding-MLP backward; see docs/performance.md)")
            for module in (self.obs_model.encoder, self.dyn_model.transformer, self.actor.net, self.critic.net):
                module.compile(dynamic=False)

    def autocast(self) -> torch.autocast:
        """bf16 autocast on the agent's device when runtime.precision is "bf16", else a disabled one."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # ---------------------------------------------------------------------------- bookkeeping
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
        for name, opt in self._optimizers().items():
            opt.load_state_dict(state[name])

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], loss: torch.Tensor,
              clip: float) -> torch.Tensor:
        """zero_grad, backward, clip this optimizer's own parameters, step; returns the grad norm."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params), clip, foreach=True)
        optimizer.step()
        return grad_norm

    def _on_device(self, batch: SeqBatch) -> SeqBatch:
        """The batch with every tensor on the agent's device (a no-op when it already is)."""
        return replace(batch, **{f.name: getattr(batch, f.name).to(self.device, non_blocking=True)
                                 for f in fields(batch) if getattr(batch, f.name) is not None})

    def _pixels(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.to(self.device, non_blocking=True).float().div_(255.0)

    # ------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def encode_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 (K, 4, 64, 64) -> encoder logits (K, C, K), in chunks, eval mode."""
        with eval_mode(self.obs_model), self.autocast():
            chunks = [self.obs_model.encode(self._pixels(chunk)) for chunk in obs.split(_ENCODE_CHUNK)]
        return torch.cat(chunks).float()

    # ---------------------------------------------------------------------- observation model
    def _obs_losses(self, o: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Decoder NLL + entropy hinge on frames o (..., 4, 64, 64); returns metrics, loss, logits."""
        cfg = self.config.obs
        with self.autocast():
            logits = self.obs_model.encode(o).float()
            z = sample_latent(logits, "straight_through")
            mean = self.obs_model.decode(z).float()
        dec = cfg.decoder_coef * decoder_loss(o, mean)
        ent, h_norm = encoder_entropy_loss(logits, cfg.entropy_coef, cfg.entropy_threshold)
        metrics = {"obs/decoder_loss": dec.detach(), "obs/entropy_loss": ent.detach(),
                   "obs/entropy": h_norm.detach()}
        return metrics, dec + ent, logits

    def pretrain_obs_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One phi step on frame stacks uint8 (K, 4, 64, 64): decoder + entropy hinge (spec §10.2.1)."""
        self.obs_model.train()
        metrics, loss, _ = self._obs_losses(self._pixels(obs))
        metrics["obs/grad_norm"] = self._step(self.obs_optimizer, self.obs_model.parameters(), loss,
                                              self.config.obs.grad_clip)
        metrics["obs/loss"] = loss.detach()
        return metrics

    # ------------------------------------------------------------------------- dynamics model
    def _dyn_update(self, z: torch.Tensor, batch: SeqBatch,
                    targets: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Dynamics forward on z_0..z_L (N, L+1, C*K) and one psi step (spec §5 steps 3-4).

        Returns the metrics and the predicted next-latent logits for h_0..h_L (detached)."""
        L = z.shape[1] - 1
        dones = batch.terminated | batch.truncated  # (N, L+1)
        self.dyn_model.train()
        with self.autocast():
            h = self.dyn_model(z.detach(), batch.actions, batch.rewards[:, :L], dones[:, :L])  # (N, L+1, D)
            latent_logits, reward_mean, discount_logit = (y.float() for y in self.dyn_model.predict(h))
        losses = dynamics_loss(latent_logits[:, 1:], reward_mean[:, 1:], discount_logit[:, 1:], targets,
                               batch.rewards[:, 1:], batch.terminated[:, 1:], dones[:, 1:], self.config)
        grad_norm = self._step(self.dyn_optimizer, self.dyn_model.parameters(), losses["dyn/loss"],
                               self.config.dyn.grad_clip)
        metrics = {k: v.detach() for k, v in losses.items()}
        metrics["dyn/grad_norm"] = grad_norm
        return metrics, latent_logits.detach()

    def pretrain_dyn_step(self, batch: SeqBatch) -> dict[str, torch.Tensor]:
        """One psi step on cached encoder logits (N, L+2, C, K), encoder frozen (spec §10.2.3)."""
        batch = self._on_device(batch)
        logits = batch.logits
        L = logits.shape[1] - 2
        z = sample_latent(logits[:, :L + 1])  # stochastic samples of z_0..z_L
        metrics, _ = self._dyn_update(z, batch, logits[:, 2:])
        return metrics

    # ---------------------------------------------------------------------------- actor-critic
    def _ac_targets(self, x: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor,
                    dones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values V_0..V_H of the current critic (eval, no grad) and GAE(lambda) advantages and returns."""
        with torch.no_grad(), eval_mode(self.critic):
            values = self.critic(x)  # (M, H+1)
        advantages, returns = gae(rewards, values, discounts, dones, self.config.ac.gae_lambda)
        return values, advantages, returns

    def _critic_step(self, x: torch.Tensor, returns: torch.Tensor, weights: torch.Tensor) -> dict:
        values = self.critic(x[:, :-1])
        loss = critic_loss(values, returns, weights)
        grad_norm = self._step(self.critic_optimizer, self.critic.parameters(), loss,
                               self.config.ac.grad_clip)
        return {"critic/loss": loss.detach(), "critic/grad_norm": grad_norm}

    def pretrain_ac_step(self, batch: SeqBatch) -> dict[str, torch.Tensor]:
        """Actor-critic on real data (spec §10.2.4): L = ac.horizon steps from cached logits (N, L+2, C, K).
        Critic: GAE regression with weights 1; actor: pure entropy maximisation. Actor step, then critic."""
        cfg = self.config.ac
        batch = self._on_device(batch)
        logits = batch.logits
        L = logits.shape[1] - 2
        z = sample_latent(logits)  # (N, L+2, C*K): context, then states 1..L+1
        dones = (batch.terminated | batch.truncated)[:, 1:]  # (N, L)
        discounts = cfg.gamma * (~dones).float()
        x = z[:, 1:]
        if cfg.input_h:
            all_dones = batch.terminated | batch.truncated
            with torch.no_grad(), eval_mode(self.dyn_model):
                h = self.dyn_model(z[:, :L + 1], batch.actions, batch.rewards[:, :L], all_dones[:, :L])
            x = torch.cat([x, h], -1)  # state t pairs with h_{t-1}
        values, _, returns = self._ac_targets(x, batch.rewards[:, 1:], discounts, dones)

        entropy = policy_entropy(self.actor(x[:, :-1]))
        h_norm = entropy.mean() / math.log(self.num_actions)
        loss = -cfg.entropy_coef * h_norm
        grad_norm = self._step(self.actor_optimizer, self.actor.parameters(), loss, cfg.grad_clip)
        metrics = {"actor/loss": loss.detach(), "actor/entropy": h_norm.detach(), "actor/grad_norm": grad_norm}
        metrics.update(self._critic_step(x, returns, torch.ones_like(returns)))
        metrics["critic/value"] = values.mean()
        return metrics

    # ------------------------------------------------------------------------------ main step
    def train_step(self, batch: SeqBatch,
                   sample_start_obs: Callable[[int], torch.Tensor]) -> dict[str, torch.Tensor]:
        """One world-model update (phi and psi) on batch.obs (N, L+2, 4, 64, 64), then imagination from
        ac.batch_size of the N*L start candidates, one critic step, one actor step (spec §5, §7, §8)."""
        metrics, start = self.world_model_step(self._on_device(batch))
        restart_logits = self.encode_logits(sample_start_obs(self.config.ac.batch_size))
        metrics.update(self.ac_update(self.imagine_trajectory(start, restart_logits)))
        return metrics

    def world_model_step(self, batch: SeqBatch) -> tuple[dict[str, torch.Tensor], StartStates]:
        """The phi and psi updates of a train step (spec §5) on an on-device batch; returns their metrics
        and the M imagination starts drawn from the N*L candidates (z_k, a_k, r_k, d_k) -> z_{k+1}."""
        cfg = self.config
        o = self._pixels(batch.obs)
        N, L = o.shape[0], o.shape[1] - 2

        # Context and next-observation encodings without grad, in eval mode.
        with torch.no_grad(), eval_mode(self.obs_model), self.autocast():
            z_context = sample_latent(self.obs_model.encode(o[:, 0]).float())  # (N, C*K)
            next_logits = self.obs_model.encode(o[:, L + 1]).float()  # (N, C, K)
        self.obs_model.train()
        metrics, obs_loss, logits = self._obs_losses(o[:, 1:L + 1])  # logits (N, L, C, K)
        z = torch.cat([z_context[:, None], sample_latent(logits.detach(), "straight_through")], 1)
        targets = torch.cat([logits[:, 1:], next_logits[:, None]], 1)
        dyn_metrics, prior_logits = self._dyn_update(z, batch, targets)
        metrics.update(dyn_metrics)
        consistency = consistency_loss(logits, prior_logits[:, :-1], cfg.obs.consistency_direction)
        obs_loss = obs_loss + cfg.obs.consistency_coef * consistency
        metrics["obs/consistency_loss"] = consistency.detach()
        metrics["obs/loss"] = obs_loss.detach()
        metrics["obs/grad_norm"] = self._step(self.obs_optimizer, self.obs_model.parameters(), obs_loss,
                                              cfg.obs.grad_clip)

        dones = batch.terminated | batch.truncated
        choice = torch.randperm(N * L, device=self.device)[:cfg.ac.batch_size]
        start = StartStates(z_context=z[:, :L].flatten(0, 1)[choice],
                            a_context=batch.actions[:, :L].flatten()[choice],
                            r_context=batch.rewards[:, :L].flatten()[choice],
                            d_context=dones[:, :L].flatten()[choice],
                            z=z[:, 1:].detach().flatten(0, 1)[choice])
        return metrics, start

    def imagine_trajectory(self, start: StartStates, restart_logits: torch.Tensor,
                           kv_cache: bool = True) -> Trajectory:
        """Imagination (spec §7) with the dynamics model and actor in eval mode; fp32 outputs."""
        with eval_mode(self.dyn_model, self.actor), self.autocast():
            trajectory = imagine(self.dyn_model, self.actor, start, restart_logits, self.config, kv_cache)
        if self.bf16:  # the actor-critic update runs in fp32
            trajectory = replace(trajectory, **{f.name: getattr(trajectory, f.name).float() for f in fields(trajectory)
                                                if getattr(trajectory, f.name).is_floating_point()})
        return trajectory

    def ac_update(self, trajectory: Trajectory) -> dict[str, torch.Tensor]:
        """Critic step, then actor step, on an imagined trajectory (spec §8)."""
        x = trajectory.policy_input(self.config.ac.input_h)
        weights = trajectory.weights
        values, advantages, returns = self._ac_targets(x, trajectory.rewards, trajectory.discounts,
                                                       trajectory.dones)
        metrics = self._critic_step(x, returns, weights)
        losses = actor_loss(self.actor(x[:, :-1]), trajectory.actions, advantages, weights, self.config)
        metrics["actor/grad_norm"] = self._step(self.actor_optimizer, self.actor.parameters(),
                                                losses["actor/loss"], self.config.ac.grad_clip)
        metrics.update({k: v.detach() for k, v in losses.items()})
        metrics.update({"critic/value": values.mean(), "critic/return": returns.mean(),
                        "imag/reward": trajectory.rewards.mean(),
                        "imag/discount": trajectory.discounts.mean(),
                        "imag/done_frac": trajectory.dones.float().mean(), "imag/weight": weights.mean()})
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
    def act(self, obs: np.ndarray) -> np.ndarray:
        """uint8 (B, 4, 64, 64) -> int64 actions (B,). The encoder and actor have no dropout, so they run
        as they are (no train/eval switching); the encoder takes its small-batch path."""
        agent = self.agent
        if obs.ndim != 4 or obs.shape[0] != self.num_envs:
            raise ValueError(f"expected observations ({self.num_envs}, 4, 64, 64), got {obs.shape}")
        with agent.autocast():
            logits = agent.obs_model.encode_for_acting(agent._pixels(torch.from_numpy(np.ascontiguousarray(obs))))
        z = sample_latent(logits.float(), "argmax")  # (B, C*K)
        x = z
        if self.input_h:
            with eval_mode(agent.dyn_model):
                h = agent.dyn_model(self.z, self.a, self.r[:, :-1], self.d[:, :-1])[:, -1]
            h = torch.where((self.length > 0)[:, None], h, torch.zeros_like(h))
            x = torch.cat([z, h], -1)
        a = sample_action(agent.actor(x))
        self._last = (z, a)
        return a.cpu().numpy().astype(np.int64)

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
