"""Transformer-XL dynamics model: memory equals a full pass, masks, relative positions (spec §4.3-§4.4)."""

import math

import pytest
import torch
from torch import nn

from twm.actor_critic import Actor, sample_action
from twm.config import smoke
from twm.dynamics_model import DynamicsModel, TransformerXL, attention_mask, sinusoid_table
from twm.imagination import MEMORY_KINDS, Imagination, RestartPool, StartStates, Trajectory, imagine
from twm.observation_model import sample_latent

A = 5


def make_model(**overrides) -> DynamicsModel:
    torch.manual_seed(0)
    return DynamicsModel(smoke().with_overrides(overrides), A).eval()


def random_window(model: DynamicsModel, B: int, T: int, stop_at: int | None = None):
    C, K = model.num_categoricals, model.num_classes
    z = sample_latent(torch.randn(B, T + 1, C, K))
    a = torch.randint(A, (B, T + 1))
    r = torch.randn(B, T)
    stop = torch.zeros(B, T, dtype=torch.bool)
    if stop_at is not None:
        stop[0, stop_at] = True
    return z, a, r, stop


def starts(model: DynamicsModel, M: int, g: torch.Generator) -> StartStates:
    C, K = model.num_categoricals, model.num_classes
    return StartStates(z_context=sample_latent(torch.randn(M, C, K, generator=g)),
                       a_context=torch.randint(A, (M,), generator=g), r_context=torch.randn(M, generator=g),
                       d_context=torch.tensor([True, False] * (M // 2)),
                       z=sample_latent(torch.randn(M, C, K, generator=g)))


def rollout(model: DynamicsModel, config, start: StartStates, memory: str, seed: int = 123) -> Trajectory:
    """An imagined trajectory with a fresh actor, restarts from a random pool, under a fixed RNG seed."""
    torch.manual_seed(seed)
    C, K = model.num_categoricals, model.num_classes
    actor = Actor(config, A)
    world = Imagination(model, config, RestartPool(torch.randn(4, C, K)), memory=memory)
    return imagine(world, lambda x: sample_action(actor(x)), start, config.ac.horizon, config.ac.input_h)


@pytest.mark.parametrize("input_rewards", [True, False])
@pytest.mark.parametrize("memory", MEMORY_KINDS)
@torch.no_grad()
def test_imagined_hidden_states_equal_a_full_pass_over_the_imagined_window(input_rewards, memory):
    # 7 steps > memory_length 4: the layer-input memory drops tokens and the sliding window binds; a threshold
    # of 0.6 makes the cumulative discount (initial gamma_hat ~0.73) end episodes, so stops matter too.
    cfg = smoke().with_overrides({"dyn.input_rewards": input_rewards, "ac.horizon": 7,
                                  "dyn.discount_threshold": 0.6})
    model = make_model(**{"dyn.input_rewards": input_rewards})
    start = starts(model, 4, torch.Generator().manual_seed(0))
    traj = rollout(model, cfg, start, memory)
    assert traj.dones.any() and not traj.dones.all()
    H = cfg.ac.horizon
    # The window the imagination walked: the context step, then imagined steps 0..H-1 (the last one current).
    z = torch.cat([start.z_context[:, None], traj.z[:, :H]], 1)
    a = torch.cat([start.a_context[:, None], traj.actions], 1)
    r = torch.cat([start.r_context[:, None], traj.rewards[:, :H - 1]], 1)
    stop = torch.cat([start.d_context[:, None], traj.dones[:, :H - 1]], 1)
    full = model(z, a, r, stop)  # (M, H+1, D): h_context, h_0 .. h_{H-1}
    assert (full - traj.h).abs().max().item() <= 1e-5


@torch.no_grad()
def test_stop_mask_cuts_attention_across_episode_ends():
    model = make_model()
    z, a, r, stop = random_window(model, 2, 5, stop_at=2)
    with_stop = model(z, a, r, stop)
    without = model(z, a, r, torch.zeros_like(stop))
    # Row 0 has a stop at step 2: h_0..h_2 are unchanged, h_3.. differ; row 1 has none.
    torch.testing.assert_close(with_stop[0, :3], without[0, :3])
    assert (with_stop[0, 3:] - without[0, 3:]).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(with_stop[1], without[1])
    # After the stop, h_3 is what a fresh window starting at step 3 gives.
    fresh = model(z[:, 3:], a[:, 3:], r[:, 3:], stop[:, 3:])
    torch.testing.assert_close(with_stop[0, 3:], fresh[0], atol=1e-5, rtol=0)


def test_attention_mask_blocks_keys_before_a_stop_and_outside_the_window():
    P, memory_length = 3, 1
    stop = torch.tensor([[False, True, False]])  # 3 complete steps + current (z, a): 11 tokens
    mask = attention_mask(11, 11, P, memory_length, stop)[0]
    for q in range(11):
        step_q, modality = divmod(q, P)
        lowest = q - (memory_length + 1) * P if modality < 2 else q - modality - memory_length * P
        for k in range(11):
            step_k = k // P
            crosses_stop = bool(stop[0, step_k:step_q].any()) if step_k < step_q else False
            blocked = k > q or k < lowest or crosses_stop
            assert mask[q, k].item() == blocked, (q, k)
    assert not mask.all(-1).any()  # every query sees at least itself


def test_relative_position_uses_distance_p_minus_j_and_scale_one_over_sqrt_d_model():
    torch.manual_seed(1)
    D, H, S = 8, 2, 5
    txl = TransformerXL(D, H, 16, num_layers=1, dropout=0.0, max_tokens=16).eval()
    layer = txl.layers[0]
    x = torch.randn(1, S, D)
    # Attention by hand: score(p, j) = ((q_p+u).k_j + (q_p+v).W_R R[p-j]) / sqrt(d_model), causal keys.
    attn = layer.self_attn
    dh = D // H
    q, k, v = attn.qkv_proj(x[0]).chunk(3, -1)
    R = attn.pos_proj(sinusoid_table(16, D)[:S])
    out = torch.zeros(S, D)
    for p in range(S):
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            scores = torch.stack([((q[p, sl] + txl.u[h]) @ k[j, sl] + (q[p, sl] + txl.v[h]) @ R[p - j, sl])
                                  for j in range(p + 1)]) / math.sqrt(D)
            out[p, sl] = scores.softmax(0) @ v[: p + 1, sl]
    causal = torch.ones(S, S, dtype=torch.bool).triu(1)[None]
    with torch.no_grad():
        got, probs = attn(x, sinusoid_table(16, D)[:S], txl.u, txl.v, causal, need_weights=True)
        fused, none = attn(x, sinusoid_table(16, D)[:S], txl.u, txl.v, causal)
    torch.testing.assert_close(got[0], attn.out_proj(out), atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, got, atol=1e-5, rtol=0)
    assert none is None
    for p in range(S):  # the returned probabilities are the hand-computed softmax rows
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            scores = torch.stack([((q[p, sl] + txl.u[h]) @ k[j, sl] + (q[p, sl] + txl.v[h]) @ R[p - j, sl])
                                  for j in range(p + 1)]) / math.sqrt(D)
            torch.testing.assert_close(probs[0, h, p, :p + 1], scores.softmax(0), atol=1e-6, rtol=0)
            assert torch.all(probs[0, h, p, p + 1:] == 0)


def test_post_layer_norm_and_shared_u_v():
    model = make_model()
    txl = model.transformer
    names = [n for n, _ in txl.named_parameters()]
    assert names.count("u") == 1 and names.count("v") == 1
    assert not any(n.endswith(".u") or n.endswith(".v") for n in names)
    # Post-LN: each layer's output is LayerNorm-ed (zero mean, unit variance per token before the affine).
    layer = txl.layers[0]
    with torch.no_grad():
        layer.norm2.weight.fill_(1.0)
        layer.norm2.bias.zero_()
        out, _ = layer(torch.randn(2, 5, 32) * 7 + 3, sinusoid_table(5, 32), txl.u, txl.v,
                       torch.zeros(1, 5, 5, dtype=torch.bool))
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    assert isinstance(layer.norm1, nn.LayerNorm)


@pytest.mark.parametrize("memory", ["layer_inputs", "vanilla"])
def test_every_imagination_memory_gives_the_kv_cache_trajectory(memory):
    cfg = smoke().with_overrides({"ac.horizon": 8, "dyn.discount_threshold": 0.5})
    model = make_model()
    start = starts(model, 6, torch.Generator().manual_seed(1))
    with torch.no_grad():
        kv, other = rollout(model, cfg, start, "kv_cache"), rollout(model, cfg, start, memory)
    assert kv.dones.any()  # restarts happened, so the stop mask mattered
    assert (kv.h - other.h).abs().max().item() <= 1e-5
    assert torch.equal(kv.z, other.z) and torch.equal(kv.actions, other.actions)
