"""Smoke-sized Agent: every update step runs and changes what it should, gradients stay in their own
module, imagination restarts and weights follow spec §7, and the acting policy works."""

import io
import math

import numpy as np
import pytest
import torch

from twm.actor_critic import Actor, policy_entropy, sample_action
from twm.agent import Agent
from twm.config import smoke
from twm.dynamics_model import DynamicsModel
from twm.imagination import Imagination, RestartPool, StartStates, imagine, start_candidates
from twm.observation_model import one_hot_latent, sample_latent
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

    def _step(self, optimizer, loss, clip):
        modules = {"observation": self.obs_model, "dynamics": self.dyn_model, "actor": self.actor,
                   "critic": self.critic}
        self.zero_grad(set_to_none=True)
        owner = next(name for name, opt in self._optimizers().items() if opt is optimizer)
        grad_norm = super()._step(optimizer, loss, clip)
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


def test_restored_agent_and_optimizers_continue_exactly_like_the_original():
    """A checkpoint's agent + optimizer state (Adam moments, step counts) makes the next update identical."""
    torch.manual_seed(0)
    agent = Agent(smoke(), A)
    for _ in range(2):
        agent.pretrain_obs_step(frames(4))
    saved = io.BytesIO()  # as a checkpoint file: saved and loaded with weights_only
    torch.save({"agent": agent.state_dict(), "optimizers": agent.optimizer_state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    restored = Agent(smoke(), A)
    restored.load_state_dict(state["agent"])
    restored.load_optimizer_state_dict(state["optimizers"])
    fresh_moments = Agent(smoke(), A)
    fresh_moments.load_state_dict(state["agent"])  # same weights, empty optimizer state
    obs = frames(4)
    for model in (agent, restored, fresh_moments):
        torch.manual_seed(1)
        model.pretrain_obs_step(obs)
    for p, q in zip(agent.obs_model.parameters(), restored.obs_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, r) for p, r in zip(agent.obs_model.parameters(),
                                                      fresh_moments.obs_model.parameters(), strict=True))


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
    actor = Actor(cfg, A)
    world = Imagination(dyn, cfg, RestartPool(pool))
    traj = imagine(world, lambda x: sample_action(actor(x)), start, cfg.ac.horizon, False)
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


def test_the_decoder_and_the_dynamics_model_share_one_latent_sample_per_step():
    torch.manual_seed(0)
    agent = Agent(smoke(), A)
    batch = make_batch(agent, 4, smoke().wm.sequence_length, False)
    wm = agent.world_model_pass(batch)  # drawn
    with torch.no_grad():
        assert torch.equal(wm.decoded, agent.obs_model.decode(wm.z[:, 1:]))  # z_1..z_L were decoded
    C, K = smoke().obs.num_categoricals, smoke().obs.num_classes
    assert torch.equal(wm.z.unflatten(-1, (C, K)).sum(-1), torch.ones(wm.z.shape[:2] + (C,)))  # exact one-hots
    z_index = torch.randint(K, (4, smoke().wm.sequence_length + 1, C))
    replayed = agent.world_model_pass(batch, z_index)  # recorded draws replace both uses
    assert torch.equal(replayed.z, one_hot_latent(torch.zeros(*z_index.shape, K), z_index))


def test_imagination_starts_pair_each_real_step_with_the_next_latent():
    torch.manual_seed(0)
    cfg = smoke()
    agent = Agent(cfg, A)
    N, L, C, K = 4, cfg.wm.sequence_length, cfg.obs.num_categoricals, cfg.obs.num_classes
    batch = make_batch(agent, N, L, False)
    z_index = torch.randint(K, (N, L + 1, C))
    z = one_hot_latent(torch.zeros(N, L + 1, C, K), z_index)
    dones = batch.terminated | batch.truncated
    candidates = start_candidates(z, batch.actions, batch.rewards, dones)
    for n in range(N):
        for k in range(L):  # start n*L + k: context (z_k, a_k, r_k, d_k), first imagined state z_{k+1}
            i = n * L + k
            assert torch.equal(candidates.z_context[i], z[n, k]) and torch.equal(candidates.z[i], z[n, k + 1])
            assert candidates.a_context[i] == batch.actions[n, k] and candidates.r_context[i] == batch.rewards[n, k]
            assert candidates.d_context[i] == dones[n, k]
    # world_model_step hands out M distinct candidates of the same replayed latents.
    _, start = agent.world_model_step(batch, z_index)
    rows = [next(i for i in range(N * L) if torch.equal(candidates.z_context[i], start.z_context[m])
                 and torch.equal(candidates.z[i], start.z[m])) for m in range(cfg.ac.batch_size)]
    assert len(set(rows)) == cfg.ac.batch_size
    assert torch.equal(candidates.select(torch.tensor(rows)).a_context, start.a_context)
    assert torch.equal(candidates.select(torch.tensor(rows)).d_context, start.d_context)


@pytest.mark.parametrize("latent_coef", [0.0, 1.0])
def test_latent_head_moves_only_when_its_loss_is_on(latent_coef):
    """dyn.latent_coef 0 is the released training: its latent head never changes (no weight-decay drift)."""
    torch.manual_seed(0)
    cfg = smoke().with_overrides({"dyn.latent_coef": latent_coef})
    agent = Agent(cfg, A)
    head, rest = agent.dyn_model.latent_head, agent.dyn_model.transformer
    in_optimizer = {id(p) for group in agent.dyn_optimizer.param_groups for p in group["params"]}
    assert all((id(p) in in_optimizer) == bool(latent_coef) for p in head.parameters())
    before_head, before_rest = snapshot(head), snapshot(rest)
    for _ in range(2):
        agent.world_model_step(make_batch(agent, 4, cfg.wm.sequence_length, False))
        agent.pretrain_dyn_step(make_batch(agent, 4, cfg.wm.sequence_length, True))
    assert changed(head, before_head) == bool(latent_coef)
    assert changed(rest, before_rest)


def _pretrain_ac_batch(agent: Agent, N: int, L: int, terminated: bool, truncated: bool):
    batch = make_batch(agent, N, L, True)
    batch.rewards = torch.zeros_like(batch.rewards)
    batch.terminated = torch.full_like(batch.terminated, terminated)
    batch.truncated = torch.full_like(batch.truncated, truncated)
    return batch


def test_pretraining_critic_targets_cut_at_truncations_too():
    """Spec §10.2.4: on real data the discount is 0.99 * NOT(terminated OR truncated)."""
    cfg = smoke()
    returns = {}
    for flags in ((False, False), (True, False), (False, True)):
        torch.manual_seed(0)
        agent = Agent(cfg, A)
        with torch.no_grad():  # V = 1 everywhere; rewards are 0, so a return is its discounted bootstrap
            agent.critic.net[-1].weight.zero_()
            agent.critic.net[-1].bias.fill_(1.0)
        metrics = agent.pretrain_ac_step(_pretrain_ac_batch(agent, 6, cfg.ac.horizon, *flags))
        returns[flags] = metrics["critic/return"].item()
    assert returns[(False, False)] > 0.9
    assert returns[(True, False)] == 0.0 and returns[(False, True)] == 0.0


def test_pretraining_entropy_is_averaged_over_every_state_with_the_bootstrap_one():
    torch.manual_seed(0)
    cfg = smoke()
    agent = Agent(cfg, A)
    N, L, C, K = 6, cfg.ac.horizon, cfg.obs.num_categoricals, cfg.obs.num_classes
    batch = _pretrain_ac_batch(agent, N, L, False, False)
    batch.logits = torch.full((N, L + 2, C, K), -30.0).scatter_(-1, torch.randint(K, (N, L + 2, C, 1)), 30.0)
    z = sample_latent(batch.logits, "argmax")[:, 1:]  # the states 1..L+1 (the draws are these for sure)
    with torch.no_grad():
        entropy = policy_entropy(agent.actor(z)) / math.log(A)  # (N, L+1)
    all_states, without_bootstrap = entropy.mean().item(), entropy[:, :-1].mean().item()
    assert abs(all_states - without_bootstrap) > 1e-5  # the two readings are distinguishable here
    metrics = agent.pretrain_ac_step(batch)
    assert metrics["actor/entropy"].item() == pytest.approx(all_states, rel=1e-6)
