"""Actor theta and critic xi (spec §8): two MLPs on z (or [z, h]), GAE(lambda) targets from predicted
discounts and imagined dones, the Normal critic loss and REINFORCE with a thresholded entropy bonus."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from twm.config import Config


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """Linear -> SiLU per hidden layer; orthogonal init, gain sqrt 2 hidden and 1 output, zero biases."""
    layers: list[nn.Module] = []
    dims = (in_dim, *hidden)
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        linear = nn.Linear(d_in, d_out)
        nn.init.orthogonal_(linear.weight, math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.SiLU()]
    final = nn.Linear(dims[-1], out_dim)
    nn.init.orthogonal_(final.weight, 1.0)
    nn.init.zeros_(final.bias)
    return nn.Sequential(*layers, final)


def policy_input_dim(config: Config) -> int:
    latent_dim = config.obs.num_categoricals * config.obs.num_classes
    return latent_dim + (config.dyn.embed_dim if config.ac.input_h else 0)


class Actor(nn.Module):
    """pi(a | x): x (..., in) -> action logits (..., A)."""

    def __init__(self, config: Config, num_actions: int):
        super().__init__()
        self.net = mlp(policy_input_dim(config), config.ac.actor_hidden, num_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Critic(nn.Module):
    """V(x): x (..., in) -> (...)."""

    def __init__(self, config: Config):
        super().__init__()
        self.net = mlp(policy_input_dim(config), config.ac.critic_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[..., 0]


def sample_action(logits: torch.Tensor) -> torch.Tensor:
    """Categorical sample at temperature 1: logits (..., A) -> int64 (...)."""
    u = torch.rand_like(logits).clamp_(min=torch.finfo(logits.dtype).tiny)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def policy_entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, discounts: torch.Tensor, dones: torch.Tensor,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) with gamma_t = discount_t * NOT done_t: rewards, discounts, dones (B, H), values (B, H+1)
    -> advantages and returns R = A + V, both (B, H). The last state bootstraps (A_H = 0)."""
    gamma = discounts * (~dones).to(discounts.dtype)
    delta = rewards + gamma * values[:, 1:] - values[:, :-1]
    advantages = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in range(delta.shape[1] - 1, -1, -1):
        running = delta[:, t] + gamma[:, t] * lam * running
        advantages[:, t] = running
    return advantages, advantages + values[:, :-1]


def critic_loss(values: torch.Tensor, returns: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean(w * -log N(R; V, 1))."""
    nll = 0.5 * (returns.detach() - values).square() + 0.5 * math.log(2 * math.pi)
    return (weights * nll).mean()


def entropy_loss(entropy: torch.Tensor, weights: torch.Tensor, num_actions: int, coef: float,
                 threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """coef * relu(threshold - mean(w * H) / ln A): the hinge is on the batch-mean weighted normalised
    entropy. Threshold 1 gives a plain entropy bonus (the Gamma = 1 ablation). Returns (loss, H_norm)."""
    h_norm = (weights * entropy).mean() / math.log(num_actions)
    return coef * F.relu(threshold - h_norm), h_norm


def actor_loss(logits: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
               config: Config) -> dict[str, torch.Tensor]:
    """-mean(w * log pi(a) * A) + thresholded entropy loss; logits (B, H, A), the rest (B, H)."""
    log_pi = logits.log_softmax(-1).gather(-1, actions[..., None])[..., 0]
    advantages = advantages.detach()
    if config.ac.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    reinforce = -(weights * log_pi * advantages).mean()
    ent_loss, h_norm = entropy_loss(policy_entropy(logits), weights, logits.shape[-1], config.ac.entropy_coef,
                                    config.ac.entropy_threshold)
    return {"actor/loss": reinforce + ent_loss, "actor/reinforce_loss": reinforce,
            "actor/entropy_loss": ent_loss, "actor/entropy": h_norm}
