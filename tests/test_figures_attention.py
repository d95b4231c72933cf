"""Attention capture and the mask-aware attention rollout of twm.inspect (spec §14), on constructed cases
and a fresh smoke-sized model (no checkpoint needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from twm.agent import Agent
from twm.config import smoke
from twm.dynamics_model import attention_mask
from twm.imagination import Imagination
from twm.inspect import (
    AttentionRecorder,
    LoadedRun,
    attention_output,
    attention_rollout,
    imagine,
    rollout_rows,
)
from twm.replay import ReplayBuffer


def _causal(n: int) -> np.ndarray:
    return np.triu(np.ones((n, n), dtype=bool), 1)  # True above the diagonal = future keys blocked


def test_rollout_of_identity_attention_is_identity():
    attention = np.stack([np.eye(5)] * 3)
    rollout = attention_rollout(attention, _causal(5))
    assert rollout.shape == (3, 5, 5)
    np.testing.assert_allclose(rollout, np.stack([np.eye(5)] * 3))


def test_rollout_of_two_hand_made_layers():
    # A'_l = 0.5 A_l + 0.5 I; R_2 = A'_2 A'_1 = [[1, 0], [0.1 + 0.9 * 0.25, 0.9 * 0.75]].
    a1 = np.array([[1.0, 0.0], [0.5, 0.5]])
    a2 = np.array([[1.0, 0.0], [0.2, 0.8]])
    rollout = attention_rollout(np.stack([a1, a2]), _causal(2))
    np.testing.assert_allclose(rollout[0], [[1.0, 0.0], [0.25, 0.75]])
    np.testing.assert_allclose(rollout[1], [[1.0, 0.0], [0.325, 0.675]])


def test_rollout_renormalises_over_unmasked_keys_only():
    # A row that (wrongly) puts mass on a masked key: that mass is dropped and the row renormalised.
    a = np.array([[0.5, 0.5], [0.5, 0.5]])
    rollout = attention_rollout(a[None], _causal(2))[0]
    np.testing.assert_allclose(rollout, [[1.0, 0.0], [0.25, 0.75]])


def test_rollout_mass_never_crosses_an_episode_boundary():
    # 5 complete steps (z, a, r) + current (z, a) with a stop at step 2: the current a token's rollout
    # puts no mass on steps 0..2, however the layers mix, and every row still sums to 1.
    P, memory = 3, 4
    stop = torch.tensor([[False, False, True, False, False]])
    n = 5 * P + 2
    mask = attention_mask(n, n, P, memory, stop)[0].numpy()
    rng = np.random.default_rng(0)
    attention = rng.random((4, n, n)) * ~mask
    attention /= attention.sum(-1, keepdims=True)
    rollout = attention_rollout(attention, mask)
    np.testing.assert_allclose(rollout.sum(-1), 1.0)
    first_after_stop = 3 * P
    assert np.all(rollout[:, -1, :first_after_stop] == 0.0)
    assert np.all(rollout[:, -1, first_after_stop:] > 0.0)
    # The row-only computation used for long histories gives the same rows.
    np.testing.assert_allclose(rollout_rows(attention, mask), rollout[:, -1])
    np.testing.assert_allclose(rollout_rows(attention, mask, query=7), rollout[:, 7])


def _fresh_run(size: int = 40) -> LoadedRun:
    torch.manual_seed(0)
    config = smoke()
    agent = Agent(config, 4).eval()
    buffer = ReplayBuffer(size, (4, 64, 64))
    buffer.set_current_obs(torch.randint(0, 255, (4, 64, 64), dtype=torch.uint8))
    for step in range(size):
        obs = torch.randint(0, 255, (4, 64, 64), dtype=torch.uint8)
        buffer.append(step % 4, float(step % 3 - 1) * 0.5, False, step == 20, obs)
    return LoadedRun(path=Path("fresh"), config=config, game="Breakout", seed=0, agent=agent, buffer=buffer,
                     env_step=size)


@pytest.mark.parametrize("memory", ["vanilla", "xl"])
def test_recomputed_probabilities_reproduce_each_layers_output(memory):
    run = _fresh_run()
    dyn = run.agent.dyn_model
    latent = run.config.obs.num_categoricals * run.config.obs.num_classes
    world = Imagination(dyn, memory)
    z = torch.nn.functional.one_hot(torch.randint(8, (3, 8)), 8).float().flatten(1)  # (3, C*K)
    a = torch.tensor([0, 1, 2])
    with torch.no_grad(), AttentionRecorder(dyn) as recorder:
        world.reset(z, a, torch.zeros(3, dtype=torch.bool))
        for step in range(6):
            world.step(torch.randn(3), torch.rand(3, latent).round(), torch.tensor([step % 4] * 3))
            world.end_step(torch.tensor([False, step == 2, False]))
            probs = recorder.probs()
            assert len(probs) == run.config.dyn.num_layers
            for module, p, inputs, output in zip(recorder.modules, probs, recorder.inputs, recorder.outputs,
                                                 strict=True):
                torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
                assert torch.all(p.masked_fill(inputs["mask"][:, None], 0.0) == p)  # no mass on masked keys
                torch.testing.assert_close(attention_output(module, p, inputs["x"], inputs["memory"],
                                                                   inputs.get("cache")), output)
    assert all(not m._forward_pre_hooks for m in recorder.modules)  # hooks removed


def test_attention_maps_of_an_imagined_trajectory_are_distributions_over_the_window():
    run = _fresh_run()
    memory, P = run.config.dyn.memory_length, 3
    steps = memory + 3
    rollout = imagine(run, start=5, horizon=steps, samples=2, attention=True)
    maps = rollout.attention
    W = (memory + 1) * P + 1  # what the current a token sees directly: a, r of step t-m-1, m steps, z, a
    assert maps["raw"].shape == (steps, 2, run.config.dyn.num_layers, W)
    np.testing.assert_array_equal(maps["kinds"], [1, 2] + [0, 1, 2] * memory + [0, 1])
    full = maps["rollout"][memory:]  # steps with a complete window
    np.testing.assert_allclose(np.nansum(full, -1) + maps["outside"][memory:], 1.0, atol=1e-9)
    np.testing.assert_allclose(np.nansum(maps["raw"][memory:], -1), 1.0, atol=1e-6)
    assert np.isnan(maps["raw"][0, :, :, 0]).all()  # the first step has no full window yet
    # The r tokens carry the predicted rewards of the previous steps, the a tokens the actions taken.
    last = steps - 1
    np.testing.assert_allclose(maps["token_rewards"][last, :, -3], rollout.rewards[:, last - 1])
    np.testing.assert_array_equal(maps["token_actions"][last, :, -1], rollout.actions[:, last])
    np.testing.assert_array_equal(maps["token_actions"][last, :, -4], rollout.actions[:, last - 1])
