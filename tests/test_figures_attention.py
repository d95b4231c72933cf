"""Attention capture (twm.inspection, the attention layers' own probabilities) and the mask-aware attention
rollout of analysis.attention (spec §14), on constructed cases and a fresh smoke-sized model (no checkpoint)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.attention import attention_maps, attention_rollout, rollout_rows
from twm.agent import Agent
from twm.config import smoke
from twm.dynamics_model import attention_mask
from twm.inspection import LoadedRun, imagine
from twm.replay import ReplayBuffer

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("training", [False, True])
def test_returned_probabilities_are_the_ones_the_layer_applies(training):
    """need_weights gives the probabilities the layer's output is made of: out_proj(probs @ values) is the
    output (in training with dropout 0 on the kept probabilities' path), rows sum to 1, masked keys get 0,
    and the fused kernel (no probabilities) gives the same output."""
    run = _fresh_run()
    dyn = run.agent.dyn_model
    attn, txl = dyn.transformer.layers[0].self_attn, dyn.transformer
    B, S, D = 3, 11, run.config.dyn.embed_dim
    x = torch.randn(B, S, D)
    stop = torch.tensor([[False, True, False]] * B)
    mask = attention_mask(S, S, dyn.tokens_per_step, run.config.dyn.memory_length, stop)
    rel = txl.sinusoids[:S]
    attn.train(training)
    attn.dropout.p = 0.0  # deterministic in training mode too
    with torch.no_grad():
        out, probs = attn(x, rel, txl.u, txl.v, mask, need_weights=True)
        fused, _ = attn(x, rel, txl.u, txl.v, mask)
        values = attn.qkv_proj(x).chunk(3, -1)[2].reshape(B, S, attn.num_heads, -1).transpose(1, 2)
    torch.testing.assert_close(attn.out_proj((probs @ values).transpose(1, 2).reshape(B, S, D)), out)
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, attn.num_heads, S))
    assert torch.all(probs.masked_fill(~mask[:, None], 0.0) == 0.0)


def test_attention_rollout_maths_imports_without_torch():
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'twm'):\n"
            "            raise ImportError(name + ' is blocked')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import analysis.attention\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})


def test_attention_maps_of_an_imagined_trajectory_are_distributions_over_the_window():
    run = _fresh_run()
    memory, P = run.config.dyn.memory_length, 3
    steps = memory + 3
    rollout = imagine(run, start=5, horizon=steps, samples=2, attention=True)
    maps = attention_maps(rollout.attention, P, memory)
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
