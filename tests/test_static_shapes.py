"""Static shapes for CUDA graphs (issue 14): static-shape imagination against today's growing K/V cache, the
graphed train step (runtime.cuda_graphs) against the eager one on the same static buffers, identical op
shapes from step to step, no sync-prone ops, and (CUDA only) capture and replay against eager."""

import pytest
import torch
from test_perf_parity import (
    A,
    assert_same_trajectory,
    bf16_drift_batch,
    paper_dynamics,
    parity_config,
    random_starts,
    rollout,
)
from torch.utils._python_dispatch import TorchDispatchMode

from twm.actor_critic import sample_action
from twm.agent import Agent
from twm.config import ConfigError, smoke
from twm.graphs import StaticGraph
from twm.imagination import Imagination, RestartPool, imagine
from twm.kv_cache import KVCache

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")


class OpShapes(TorchDispatchMode):
    """Records every dispatched op with the shapes of its tensor outputs."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, tuple | list) else (out,)
        self.ops.append((func.__name__, tuple(tuple(r.shape) for r in results if isinstance(r, torch.Tensor))))
        return out


# ------------------------------------------------------------------------------ imagination
def test_static_imagination_equals_the_growing_kv_cache_under_fixed_rng():
    """Hidden states, heads and samples of a 15-step rollout with restarts (paper token layout): static shapes
    only reorder float sums (measured h difference 1.2e-6)."""
    dyn, actor = paper_dynamics()
    start, restart_logits = random_starts(16)
    config = parity_config()
    with torch.no_grad():
        growing = rollout(dyn, actor, start, restart_logits, config, "kv_cache")
        static = rollout(dyn, actor, start, restart_logits, config.with_overrides(
            {"runtime.static_imagination": True}), "kv_cache")
    assert growing.dones.any() and not growing.dones.all()  # restarts happened
    assert_same_trajectory(static, growing)


@torch.no_grad()
def test_static_imagination_attends_over_the_whole_buffer_with_zero_weight_on_unwritten_positions():
    dyn, actor = paper_dynamics()
    start, restart_logits = random_starts(4)
    config = parity_config().with_overrides({"ac.horizon": 4})
    worlds = {}
    for static in (False, True):
        torch.manual_seed(3)
        worlds[static] = Imagination(dyn, config, RestartPool(restart_logits), need_weights=True, static=static)
        imagine(worlds[static], lambda x: sample_action(actor(x)), start, 4, False)
    capacity = 2 + 4 * dyn.tokens_per_step
    for (grown, grown_mask), (static, static_mask) in zip(worlds[False].attention, worlds[True].attention,
                                                          strict=True):
        S = grown[0].shape[-1]
        assert static[0].shape[-1] == capacity and torch.equal(static_mask[..., :S], grown_mask)
        assert static_mask[..., S:].all()  # the positions not yet written are blocked
        for p_grown, p_static in zip(grown, static, strict=True):
            assert (p_static[..., :S] - p_grown).abs().max().item() <= 1e-6
            assert torch.equal(p_static[..., S:], torch.zeros_like(p_static[..., S:]))


def test_every_static_imagination_step_dispatches_the_same_ops_on_the_same_shapes():
    dyn, actor = paper_dynamics()
    start, restart_logits = random_starts(8)
    config = parity_config().with_overrides({"ac.horizon": 6})
    per_step = {}
    for static in (False, True):
        world = Imagination(dyn, config, RestartPool(restart_logits), static=static)
        steps = []
        with torch.no_grad():
            world.reset(start)
            for _ in range(config.ac.horizon):
                recorder = OpShapes()
                with recorder:
                    world.step(torch.randint(A, (8,)))
                steps.append(recorder.ops)
        per_step[static] = steps
    assert all(ops == per_step[True][0] for ops in per_step[True])
    assert per_step[False][0] != per_step[False][1]  # today's cache grows: shapes change every step


def test_static_cache_refuses_more_tokens_than_it_holds():
    cache = KVCache(1, 2, 1, 4, capacity=5, device=torch.device("cpu"), static=True)
    assert cache.source_length(2) == 5
    cache.commit(2)
    assert cache.source_length(3) == 5
    cache.commit(3)
    with pytest.raises(ValueError, match="cannot take 6 tokens"):
        cache.source_length(1)


@pytest.mark.parametrize("override, message", [
    ({"runtime.cuda_graphs": True}, "needs runtime.static_imagination=True"),
    ({"runtime.static_imagination": True, "dyn.imagination_memory": "vanilla"}, "needs dyn.imagination_memory=xl"),
])
def test_static_switches_reject_combinations_without_static_shapes(override, message):
    with pytest.raises(ConfigError, match=message):
        smoke().with_overrides(override)


# ------------------------------------------------------------------------------- train step
def train_steps(overrides: dict, steps: int, device: str = "cpu") -> tuple[Agent, list[dict]]:
    """`steps` train steps of a smoke agent from a fixed init and seed on fixed batches; metric copies."""
    torch.manual_seed(0)
    agent = Agent(smoke().with_overrides({"dyn.dropout": 0.0, **overrides}), A, device)
    g = torch.Generator().manual_seed(9)
    pool = torch.randint(0, 256, (64, 4, 64, 64), dtype=torch.uint8, generator=g).to(device)
    batches = [bf16_drift_batch(8, smoke().wm.sequence_length) for _ in range(steps)]
    torch.manual_seed(1)
    history = []
    for batch in batches:
        metrics = agent.train_step(batch, lambda n: pool[torch.randint(64, (n,), device=device)])
        history.append({k: v.clone() for k, v in metrics.items()})
    return agent, history


GRAPHED = {"runtime.static_imagination": True, "runtime.cuda_graphs": True}
STATIC = {"runtime.static_imagination": True}


@pytest.fixture(scope="module")
def cpu_runs() -> dict[str, tuple[Agent, list[dict]]]:
    """3 train steps each of today's path, the static-shape path and the graphed path (on a CPU)."""
    return {name: train_steps(overrides, 3) for name, overrides in (("today", {}), ("static", STATIC),
                                                                     ("graphed", GRAPHED))}


def test_graphed_train_steps_equal_eager_static_train_steps_on_cpu(cpu_runs):
    """runtime.cuda_graphs on a CPU: the same calls on static buffers, outputs reused from step to step (the
    graph's memory semantics); metrics and weights equal the eager static-shape path bit for bit."""
    eager, eager_metrics = cpu_runs["static"]
    graphed, graphed_metrics = cpu_runs["graphed"]
    for m, e in zip(graphed_metrics, eager_metrics, strict=True):
        assert m.keys() == e.keys() and all(torch.equal(m[k], e[k]) for k in m)
    for p, q in zip(graphed.parameters(), eager.parameters(), strict=True):
        assert torch.equal(p, q)
    assert set(graphed._graphs) == {"world_model_step", "encode_logits", "imagine_trajectory", "ac_update"}
    assert graphed_metrics[0]["obs/loss"] != graphed_metrics[1]["obs/loss"]  # every step trained


def test_graphed_train_step_returns_the_same_output_tensors_every_step():
    torch.manual_seed(0)
    agent = Agent(smoke().with_overrides(GRAPHED), A)
    pool = torch.randint(0, 256, (64, 4, 64, 64), dtype=torch.uint8)
    batch = bf16_drift_batch(8, smoke().wm.sequence_length)
    first = agent.train_step(batch, lambda n: pool[:n])
    value = first["critic/loss"].clone()
    second = agent.train_step(batch, lambda n: pool[:n])
    assert all(second[k] is first[k] for k in first)  # overwritten in place, as graph outputs are
    assert not torch.equal(first["critic/loss"], value)


def test_static_shape_train_steps_stay_close_to_todays_path(cpu_runs):
    """Losses and gradient norms of 3 train steps and the weights after them: static-shape imagination
    against today's growing cache (relative 1e-4 on metrics, 1e-5 absolute on weights)."""
    today, today_metrics = cpu_runs["today"]
    static, static_metrics = cpu_runs["static"]
    for m, t in zip(static_metrics, today_metrics, strict=True):
        for k in t:
            torch.testing.assert_close(m[k], t[k], rtol=1e-4, atol=1e-6, msg=k)
    for p, q in zip(static.parameters(), today.parameters(), strict=True):
        assert (p - q).abs().max().item() <= 1e-5


def test_graphed_train_step_has_value_independent_shapes():
    """Two graphed train steps on batches with other values (other episode ends, rewards, frames) dispatch the
    same ops on the same shapes: what capture needs (no sync-prone ops either: tests/test_perf_parity.py)."""
    torch.manual_seed(0)
    agent = Agent(smoke().with_overrides(GRAPHED), A)
    pool = torch.randint(0, 256, (64, 4, 64, 64), dtype=torch.uint8)
    sample = lambda n: pool[torch.randint(64, (n,))]  # noqa: E731
    first, second = bf16_drift_batch(8, smoke().wm.sequence_length), bf16_drift_batch(8, smoke().wm.sequence_length)
    second.terminated = torch.rand(second.terminated.shape) < 0.5
    second.rewards, second.obs = -second.rewards, 255 - second.obs
    agent.train_step(first, sample)
    recorded = []
    for batch in (first, second):
        recorder = OpShapes()
        with recorder:
            agent.train_step(batch, sample)
        recorded.append(recorder.ops)
    assert len(recorded[0]) > 500 and recorded[0] == recorded[1]


# ------------------------------------------------------------------------------- CUDA only
@needs_cuda
def test_graphed_train_steps_equal_eager_train_steps_on_cuda():
    """3 eager warm-up steps, the capture step and 3 replays against 7 eager steps: a replay runs eager's kernels
    on eager's RNG stream, so metrics and weights agree (up to atomics in backward kernels)."""
    eager, eager_metrics = train_steps(STATIC, 7, "cuda")
    graphed, graphed_metrics = train_steps(GRAPHED, 7, "cuda")
    assert all(g.graph is not None for g in graphed._graphs.values())
    for m, e in zip(graphed_metrics, eager_metrics, strict=True):
        for k in e:
            torch.testing.assert_close(m[k], e[k], rtol=1e-4, atol=1e-6, msg=k)
    for p, q in zip(graphed.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@needs_cuda
def test_graphed_train_step_makes_no_host_syncs_on_cuda():
    from twm.replay import ReplayBuffer
    from twm.sampling import balanced_starts

    agent = Agent(smoke().with_overrides(GRAPHED), A, "cuda")
    buffer = ReplayBuffer(1_000, (4, 64, 64), "cuda")
    buffer.obs[:] = torch.randint(0, 256, buffer.obs.shape, dtype=torch.uint8, device="cuda")
    buffer.size = 1_000
    visits = torch.zeros(1_000, dtype=torch.long, device="cuda")
    L = smoke().wm.sequence_length

    def step():
        starts = balanced_starts(visits, buffer.size - L + 1, smoke().wm.batch_size, 20.0)
        return agent.train_step(buffer.gather(starts, L), buffer.sample_obs)

    for _ in range(5):  # warm-up and capture
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@torch.no_grad()
def test_static_rollout_replayed_as_one_cuda_graph_equals_eager_on_cuda():
    dyn, actor = paper_dynamics()
    dyn, actor = dyn.cuda(), actor.cuda()
    start, restart_logits = random_starts(64)
    start = type(start)(**{k: v.cuda() for k, v in vars(start).items()})
    config = parity_config().with_overrides({"runtime.static_imagination": True})

    def roll(start, restart_logits):
        world = Imagination(dyn, config, RestartPool(restart_logits))
        return imagine(world, lambda x: sample_action(actor(x)), start, config.ac.horizon, False)

    graphed = StaticGraph(roll, "cuda")
    for seed in range(5):  # 3 eager warm-ups, the capture, a replay
        torch.manual_seed(seed)
        replayed = graphed(start, restart_logits.cuda())
        torch.manual_seed(seed)
        eager = roll(start, restart_logits.cuda())
        assert torch.equal(replayed.actions, eager.actions) and torch.equal(replayed.z, eager.z)
        torch.testing.assert_close(replayed.h, eager.h, rtol=1e-5, atol=1e-5)
    assert graphed.graph is not None


@needs_cuda
def test_optimizer_state_restored_into_a_graphed_agent_is_captured_again_on_cuda():
    """Loading optimizer state replaces the tensors a captured graph updates: the graphs are dropped and the
    restored agent continues like an eager one restored from the same state."""
    graphed, _ = train_steps(GRAPHED, 5, "cuda")
    eager, _ = train_steps(STATIC, 5, "cuda")
    state = {"agent": {k: v.clone() for k, v in eager.state_dict().items()}, "opt": eager.optimizer_state_dict()}
    for agent in (graphed, eager):
        agent.load_state_dict(state["agent"])
        agent.load_optimizer_state_dict(state["opt"])
    assert graphed._graphs == {}
    batch = bf16_drift_batch(8, smoke().wm.sequence_length)
    pool = torch.randint(0, 256, (64, 4, 64, 64), dtype=torch.uint8, device="cuda")
    for _ in range(5):
        results = []
        for agent in (graphed, eager):
            torch.manual_seed(2)
            results.append({k: v.clone() for k, v in agent.train_step(batch, lambda n: pool[:n]).items()})
        for k in results[1]:
            torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-6, msg=k)
