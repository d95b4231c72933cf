"""Smoke-sized Agent: every update step runs and changes what it should, gradients stay in their own
module, imagination restarts and weights follow spec §7, and the acting policy works."""

import math

import numpy as np
import pytest
import torch

from twm.actor_critic import Actor
from twm.agent import Agent
from twm.config import smoke
from twm.dynamics_model import DynamicsModel
from twm.imagination import StartStates, imagine
from twm.observation_model import sample_latent
from twm.replay import SeqBatch

A = 5


def frames(*shape) -> torch.Tensor:
    return torch.randint(0, 256, (*shape, 4, 64, 64), dtype=torch.uint8)


def make_batch(agent: Agent, N: int, L: int, cached_logits: bool) -> SeqBatch:
    batch = SeqBatch(actions=torch.randint(A, (N, L + 1)), rewards=torch.tanh(torch.randn(N, L + 1)),
                     terminated=torch.rand(N, L + 1) < 0.15, truncated=torch.rand(N, L + 1) < 0.05)
    obs = frames(N, L + 2)
    if cached_logits:
        batch.logits = agent.encode_logits(obs.flatten(0, 1)).unflatten(0, (N, L + 2))
    else:
        batch.obs = obs
    return batch


class ProbeAgent(Agent):
    """Records, for every optimizer step, which modules received gradients from that step's loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grads_seen: list[tuple[str, set[str]]] = []

    def _step(self, optimizer, params, loss, clip):
        modules = {"observation": self.obs_model, "dynamics": self.dyn_model, "actor": self.actor,
                   "critic": self.critic}
        self.zero_grad(set_to_none=True)
        owner = next(name for name, opt in self._optimizers().items() if opt is optimizer)
        grad_norm = super()._step(optimizer, params, loss, clip)
        got = {name for name, m in modules.items() if any(p.grad is not None for p in m.parameters())}
        self.grads_seen.append((owner, got))
        return grad_norm


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


def assert_finite(metrics: dict[str, torch.Tensor]) -> None:
    for name, value in metrics.items():
        assert value.dim() == 0 and torch.isfinite(value), name


@pytest.mark.parametrize("overrides", [
    {},
    {"ac.input_h": True, "dyn.input_rewards": False, "dyn.imagination_memory": "vanilla",
     "obs.consistency_direction": "paper", "obs.entropy_threshold": 1.0},
])
def test_smoke_agent_steps_update_their_own_modules(overrides):
    torch.manual_seed(0)
    cfg = smoke().with_overrides(overrides)
    agent = ProbeAgent(cfg, A)
    modules = {"observation": agent.obs_model, "dynamics": agent.dyn_model, "actor": agent.actor,
               "critic": agent.critic}

    def run(step, expect_changed):
        before = {name: snapshot(m) for name, m in modules.items()}
        agent.grads_seen.clear()
        metrics = step()
        assert_finite(metrics)
        for name, m in modules.items():
            assert changed(m, before[name]) == (name in expect_changed), name
        for owner, got in agent.grads_seen:
            assert got == {owner}, f"{owner} step put gradients into {got}"
        return metrics

    m = run(lambda: agent.pretrain_obs_step(frames(16)), {"observation"})
    assert {"obs/decoder_loss", "obs/entropy_loss", "obs/entropy"} <= m.keys()
    m = run(lambda: agent.pretrain_dyn_step(make_batch(agent, 6, cfg.wm.sequence_length, True)), {"dynamics"})
    assert {"dyn/latent_loss", "dyn/reward_loss", "dyn/discount_loss"} <= m.keys()
    m = run(lambda: agent.pretrain_ac_step(make_batch(agent, 6, cfg.ac.horizon, True)), {"actor", "critic"})
    assert [owner for owner, _ in agent.grads_seen] == ["actor", "critic"]
    batch = make_batch(agent, cfg.wm.batch_size, cfg.wm.sequence_length, False)
    m = run(lambda: agent.train_step(batch, lambda n: frames(n)), set(modules))
    assert [owner for owner, _ in agent.grads_seen] == ["dynamics", "observation", "critic", "actor"]
    assert {"obs/consistency_loss", "actor/loss", "actor/entropy", "critic/loss", "critic/value",
            "imag/reward", "imag/discount", "imag/done_frac"} <= m.keys()


def test_optimizer_state_round_trips():
    torch.manual_seed(0)
    agent = Agent(smoke(), A)
    agent.pretrain_obs_step(frames(4))
    other = Agent(smoke(), A)
    other.load_optimizer_state_dict(agent.optimizer_state_dict())
    state = other.obs_optimizer.state_dict()["state"]
    assert state and torch.equal(state[0]["exp_avg"], agent.obs_optimizer.state_dict()["state"][0]["exp_avg"])
    counts = agent.param_counts()
    assert counts["total"] == sum(counts[k] for k in ("observation", "dynamics", "actor", "critic"))


def test_imagination_restarts_below_threshold_and_weights_are_discount_products():
    cfg = smoke().with_overrides({"ac.horizon": 8, "dyn.discount_threshold": 0.5})
    torch.manual_seed(0)
    dyn = DynamicsModel(cfg, A).eval()
    C, K = cfg.obs.num_categoricals, cfg.obs.num_classes
    with torch.no_grad():
        final = dyn.discount_head.net[-1]
        final.weight.zero_()
        final.bias.fill_(math.log(0.8 / 0.2))  # gamma_hat = 0.8 at every step
        latent_final = dyn.latent_head.net[-1]
        latent_final.weight.zero_()
        latent_final.bias.copy_(torch.tensor([-50.0, 50.0] + [-50.0] * (K - 2)).repeat(C))  # predicts class 1
    M = 4
    start = StartStates(z_context=sample_latent(torch.randn(M, C, K)), a_context=torch.randint(A, (M,)),
                        r_context=torch.zeros(M), d_context=torch.tensor([True, False, True, False]),
                        z=sample_latent(torch.randn(M, C, K)))
    pool = torch.full((3, C, K), -50.0)
    pool[..., 0] = 50.0  # restart latents: class 0 everywhere
    traj = imagine(dyn, Actor(cfg, A), start, pool, cfg)
    # cumulative 0.8, 0.64, 0.512, 0.4096 < 0.5 -> done at the 4th step, then restart with weight 1.
    expected_w = torch.tensor([1, 0.8, 0.64, 0.512] * 2).expand(M, 8)
    expected_d = torch.tensor([False, False, False, True] * 2).expand(M, 8)
    torch.testing.assert_close(traj.weights, expected_w)
    assert torch.equal(traj.dones, expected_d)
    torch.testing.assert_close(traj.discounts, torch.full((M, 8), 0.8))
    predicted = sample_latent(latent_final.bias.view(C, K), "argmax")
    restarted = sample_latent(pool[0], "argmax")
    for t in range(1, 9):
        want = restarted if expected_d[0, t - 1] else predicted
        assert torch.equal(traj.z[:, t], want.expand(M, -1)), t
    assert traj.z.shape == (M, 9, C * K) and traj.h.shape == (M, 9, cfg.dyn.embed_dim)


@pytest.mark.parametrize("input_h", [False, True])
def test_policy_acts_observes_and_resets(input_h):
    torch.manual_seed(0)
    cfg = smoke().with_overrides({"ac.input_h": input_h})
    agent = Agent(cfg, A)
    policy = agent.make_policy(3)
    for t in range(cfg.dyn.memory_length + 3):
        actions = policy.act(np.random.randint(0, 256, (3, 4, 64, 64), dtype=np.uint8))
        assert actions.shape == (3,) and actions.dtype == np.int64
        assert ((actions >= 0) & (actions < A)).all()
        policy.observe(np.full(3, 0.5, dtype=np.float32), np.array([False, t == 2, False]))
    policy.reset(1)
    if input_h:
        assert policy.length.tolist() == [cfg.dyn.memory_length + 3, 0, cfg.dyn.memory_length + 3]
    with pytest.raises(ValueError, match="expected observations"):
        policy.act(np.zeros((2, 4, 64, 64), dtype=np.uint8))
