"""Attention maps of an imagined step (paper Fig. 6, 10, 11; spec §14), from plain numpy arrays: the raw
head-averaged attention of the current a token (the token that produces h_t) per layer, and an attention
rollout adapted to the causal and episode masks. The attention itself is captured in `twm.inspection`.

Attention rollout (Abnar & Zuidema 2020, "slightly modified to take the causal masks into account"; the
exact modification is not published): per layer, A'_l = alpha * A_l + (1 - alpha) * I with alpha = 0.5
(the residual connection), masked keys set to 0 and each row renormalised over its unmasked keys, then
R_l = A'_l R_{l-1} (R_0 = I). The map of layer l is the row of the current a token in R_l. Because the
diagonal is never masked and masked entries stay zero, mass never crosses an episode boundary (a stop
blocks every path), while the sliding window only limits direct attention: a token just outside the a
token's window can still receive mass through intermediate tokens. The plotted window is what the a token
sees directly (the a, r of step t-m-1, m = memory_length complete steps, the current z, a); the rollout
mass on older tokens is `outside`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _residual_mix(attention: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """A'_l = renorm_unmasked(alpha A_l + (1 - alpha) I) for every layer: (L, N, N)."""
    n = attention.shape[-1]
    mixed = (alpha * attention + (1 - alpha) * np.eye(n)) * ~mask
    return mixed / np.maximum(mixed.sum(-1, keepdims=True), 1e-12)


def attention_rollout(attention: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Causal/episode-mask-aware attention rollout (see the module docstring).

    attention (L, N, N): head-averaged probabilities per layer (rows = queries); mask (N, N) True = blocked.
    Returns (L, N, N): R_l = A'_l R_{l-1}, A'_l = renorm_unmasked(alpha A_l + (1 - alpha) I)."""
    rollout = np.eye(attention.shape[-1])
    out = np.empty(attention.shape)
    for layer, mixed in enumerate(_residual_mix(attention, mask, alpha)):
        rollout = mixed @ rollout
        out[layer] = rollout
    return out


def rollout_rows(attention: np.ndarray, mask: np.ndarray, query: int = -1, alpha: float = 0.5) -> np.ndarray:
    """Row `query` of every R_l of `attention_rollout`, (L, N), by vector-matrix products: O(L^2 N^2)
    instead of O(L N^3), for long token histories."""
    mixed = _residual_mix(attention, mask, alpha)
    rows = np.empty(attention.shape[:2])
    for layer in range(len(mixed)):
        row = mixed[layer][query]
        for below in range(layer - 1, -1, -1):
            row = row @ mixed[below]
        rows[layer] = row
    return rows


def window_maps(attention: np.ndarray, mask: np.ndarray, rewards: np.ndarray, actions: np.ndarray,
                tokens_per_step: int, memory_length: int) -> dict[str, np.ndarray]:
    """Raw (head-mean) and rollout rows of the final a token, per layer, over its direct window, for one step.

    attention (M, L, N, N) head-averaged probabilities over the whole token history, mask (M, N, N), rewards
    (M, S) of the S complete steps, actions (M, S+1) including the current one. Window W =
    (memory_length+1)*P + 1 tokens ending in the current (z, a); shorter histories are padded on the left with
    NaN. Returns raw, rollout (M, L, W), outside (M, L) rollout mass on older tokens, kinds (W,) 0 z / 1 a /
    2 r, token rewards and actions (M, W) (NaN / -1 where not that kind)."""
    P = tokens_per_step
    W = (memory_length + 1) * P + 1
    A = np.asarray(attention, dtype=np.float64)
    M, L, N, _ = A.shape
    n = min(W, N)
    raw = np.full((M, L, W), np.nan)
    roll = np.full((M, L, W), np.nan)
    outside = np.zeros((M, L))
    for m in range(M):
        rows = rollout_rows(A[m], mask[m])  # (L, N)
        raw[m, :, W - n:] = A[m, :, -1, N - n:]
        roll[m, :, W - n:] = rows[:, N - n:]
        outside[m] = rows[:, :N - n].sum(-1)
    # Token positions from the end: the current z, a; before them complete steps j = 1, 2, ... back.
    history = np.arange(W - 2)[::-1]  # 0 for the token just before the current z
    kinds = np.concatenate([P - 1 - history % P, [0, 1]])[:W]
    back = np.concatenate([history // P + 1, [0, 0]])
    token_rewards = np.full((M, W), np.nan)
    token_actions = np.full((M, W), -1)
    for pos in range(W - n, W):
        if kinds[pos] == 2:
            token_rewards[:, pos] = rewards[:, -back[pos]]
        elif kinds[pos] == 1:
            token_actions[:, pos] = actions[:, -1 - back[pos]]
    return {"raw": raw, "rollout": roll, "outside": outside, "kinds": kinds, "token_rewards": token_rewards,
            "token_actions": token_actions}


def attention_maps(steps: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], tokens_per_step: int,
                   memory_length: int) -> dict[str, np.ndarray]:
    """`window_maps` of every imagined step, (attention, mask, rewards, actions) each, stacked on a leading
    step axis (H, ...); `kinds` (W,) is the same for all steps."""
    maps = [window_maps(*step, tokens_per_step, memory_length) for step in steps]
    out = {key: np.stack([m[key] for m in maps]) for key in maps[0] if key != "kinds"}
    out["kinds"] = maps[0]["kinds"]
    return out


__all__ = ["attention_maps", "attention_rollout", "rollout_rows", "window_maps"]
