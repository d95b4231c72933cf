"""Losses match hand-computed values on tiny tensors (spec §3, §4.6, §8)."""

import math

import pytest
import torch

from twm.actor_critic import actor_loss, critic_loss, entropy_loss, gae
from twm.config import smoke
from twm.dynamics_model import dynamics_loss
from twm.observation_model import consistency_loss, decoder_loss, encoder_entropy_loss


def test_gae_uses_predicted_discounts_and_cuts_at_dones():
    rewards = torch.tensor([[1.0, 0.5, 2.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    discounts = torch.tensor([[0.9, 0.8, 0.7]])
    dones = torch.tensor([[False, True, False]])
    lam = 0.95
    g = [0.9, 0.0, 0.7]  # discount * NOT done
    delta = [1.0 + g[0] * 0.2 - 0.1, 0.5 + g[1] * 0.3 - 0.2, 2.0 + g[2] * 0.4 - 0.3]
    a2 = delta[2]
    a1 = delta[1] + g[1] * lam * a2
    a0 = delta[0] + g[0] * lam * a1
    advantages, returns = gae(rewards, values, discounts, dones, lam)
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.1, a1 + 0.2, a2 + 0.3]]))


def test_actor_entropy_hinge_is_on_batch_mean_weighted_entropy():
    entropy = torch.tensor([[0.0, 0.2], [0.1, 0.05]])
    weights = torch.tensor([[1.0, 0.5], [1.0, 0.0]])
    A = 6
    h_norm = (0.0 + 0.1 + 0.1 + 0.0) / 4 / math.log(A)
    loss, got_h = entropy_loss(entropy, weights, A, coef=0.01, threshold=0.1)
    torch.testing.assert_close(got_h, torch.tensor(h_norm))
    torch.testing.assert_close(loss, torch.tensor(0.01 * (0.1 - h_norm)))
    # Above the threshold the hinge is off; Gamma = 1 (threshold 1) is a plain entropy bonus.
    assert entropy_loss(torch.full((2, 2), 1.5), torch.ones(2, 2), A, 0.01, 0.1)[0] == 0
    torch.testing.assert_close(entropy_loss(entropy, weights, A, 0.001, 1.0)[0], torch.tensor(0.001 * (1 - h_norm)))


def test_actor_loss_is_weighted_reinforce_plus_entropy_hinge():
    cfg = smoke()
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    actions = torch.tensor([[1, 0]])
    advantages = torch.tensor([[0.5, -1.0]])
    weights = torch.tensor([[1.0, 0.25]])
    log_pi = logits.log_softmax(-1)
    reinforce = -(1.0 * log_pi[0, 0, 1] * 0.5 + 0.25 * log_pi[0, 1, 0] * -1.0) / 2
    p = logits.softmax(-1)
    ent = -(p * log_pi).sum(-1)
    h_norm = (weights * ent).mean() / math.log(2)
    out = actor_loss(logits, actions, advantages, weights, cfg)
    torch.testing.assert_close(out["actor/reinforce_loss"], reinforce)
    torch.testing.assert_close(out["actor/loss"], reinforce + 0.01 * torch.relu(0.1 - h_norm))


def test_critic_loss_is_weighted_normal_nll():
    values = torch.tensor([[1.0, 2.0]])
    returns = torch.tensor([[0.0, 2.5]])
    weights = torch.tensor([[1.0, 0.5]])
    c = 0.5 * math.log(2 * math.pi)
    expected = (1.0 * (0.5 + c) + 0.5 * (0.125 + c)) / 2
    torch.testing.assert_close(critic_loss(values, returns, weights), torch.tensor(expected))


def test_encoder_entropy_hinge_and_paper_form():
    # 2 categoricals of 4 classes: one uniform (H = ln 4), one nearly deterministic.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [20.0, -20.0, -20.0, -20.0]]])
    h_norm = math.log(4) / (2 * math.log(4))  # 0.5
    loss, h = encoder_entropy_loss(logits, coef=5.0, threshold=0.1)
    assert h.item() == pytest.approx(h_norm, abs=1e-6)
    assert loss.item() == 0.0  # above the 10% threshold
    loss, _ = encoder_entropy_loss(logits, coef=5.0, threshold=0.7)
    assert loss.item() == pytest.approx(5.0 * (0.7 - h_norm), abs=1e-6)
    loss, _ = encoder_entropy_loss(logits, coef=5.0, threshold=1.0)
    assert loss.item() == pytest.approx(-5.0 * h_norm, abs=1e-6)


def test_consistency_directions():
    enc = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    prior = torch.tensor([[[0.0, 2.0]]])
    q, p = enc.softmax(-1), prior.softmax(-1)
    code = consistency_loss(enc, prior, "code")
    torch.testing.assert_close(code, -(p * q.log()).sum())
    torch.testing.assert_close(consistency_loss(enc, prior, "paper"), -(q * p.log()).sum())
    prior.requires_grad_(True)
    consistency_loss(enc, prior, "code").backward()
    assert prior.grad is None  # the prior is detached


def test_decoder_loss_is_normal_nll_summed_over_pixels():
    o = torch.zeros(2, 4, 64, 64)
    mean = torch.full((2, 4, 64, 64), 0.5)
    expected = 16384 * (0.5 * 0.25 + 0.5 * math.log(2 * math.pi))
    assert decoder_loss(o, mean).item() == pytest.approx(expected, rel=1e-6)


def test_dynamics_loss_matches_hand_computation_with_a_truncation_and_a_termination():
    cfg = smoke()
    # B=1, T=3, 1 categorical of 2 classes. Step 1 is truncated (an episode end, but the discount target stays
    # 0.99), step 2 terminated (target 0); both are latent-weight 0 (the next observation starts an episode).
    pred = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]], [[0.5, 0.2]]]])
    target = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]], [[1.0, 3.0]]]])
    reward_mean = torch.tensor([[0.5, -0.2, 0.1]])
    rewards = torch.tensor([[1.0, 0.0, -0.5]])
    discount_logit = torch.tensor([[0.3, -1.0, 2.0]])
    terminated = torch.tensor([[False, False, True]])
    truncated = torch.tensor([[False, True, False]])
    dones = terminated | truncated
    latent = -(target[0, 0, 0].softmax(-1) * pred[0, 0, 0].log_softmax(-1)).sum()  # only step 0 has weight 1
    c = 0.5 * math.log(2 * math.pi)
    reward = 10 * ((0.5 * 0.25 + c) + (0.5 * 0.04 + c) + (0.5 * 0.36 + c)) / 3

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))

    discount = 50 * (bce(0.3, 0.99) + bce(-1.0, 0.99) + bce(2.0, 0.0)) / 3
    out = dynamics_loss(pred, reward_mean, discount_logit, target, rewards, terminated, dones, cfg)
    assert out["dyn/latent_loss"].item() == pytest.approx(latent.item(), rel=1e-5)
    assert out["dyn/reward_loss"].item() == pytest.approx(reward, rel=1e-5)
    assert out["dyn/discount_loss"].item() == pytest.approx(discount, rel=1e-5)
    assert out["dyn/loss"].item() == pytest.approx(latent.item() + reward + discount, rel=1e-5)
    swapped = dynamics_loss(pred, reward_mean, discount_logit, target, rewards, dones, terminated, cfg)
    assert swapped["dyn/discount_loss"].item() != pytest.approx(discount, rel=1e-3)  # the flags are not alike


def test_dynamics_loss_without_latent_term_gives_the_latent_head_no_gradient():
    """dyn.latent_coef 0 is the released loss (spec §4.6): reward + discount only, nothing reaches the head."""
    cfg = smoke().with_overrides({"dyn.latent_coef": 0.0})
    pred = torch.randn(2, 3, 4, 5, requires_grad=True)
    reward_mean = torch.randn(2, 3, requires_grad=True)
    flags = torch.zeros(2, 3, dtype=torch.bool)
    out = dynamics_loss(pred, reward_mean, torch.randn(2, 3), torch.randn(2, 3, 4, 5), torch.randn(2, 3), flags,
                        flags, cfg)
    assert out["dyn/latent_loss"].item() == 0.0
    out["dyn/loss"].backward()
    assert pred.grad is None and reward_mean.grad is not None
