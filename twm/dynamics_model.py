"""Dynamics model psi (spec §4): token embeddings, a Transformer-XL decoder with relative positions
and episode-boundary masks, the latent/reward/discount heads, and the dynamics loss.

Token layout per time step is z, a, r (z, a when dyn.input_rewards is False). A window of T+1 steps
is `z_0 a_0 r_0 ... z_T a_T` (T*P + 2 tokens, P tokens per step); h_t is the output at the a_t token.
Tensors are batch-first: (B, tokens, D)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from twm.config import Config, ConfigError
from twm.kv_cache import KVCache, LayerKV
from twm.observation_model import init_layer

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- relative positions
def sinusoid_table(num_rows: int, dim: int) -> torch.Tensor:
    """Interleaved sinusoids (even dims sin, odd dims cos), base 10000: (num_rows, dim)."""
    position = torch.arange(num_rows, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_rows, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


def attention_mask(src_len: int, tgt_len: int, tokens_per_step: int, memory_length: int,
                   stop: torch.Tensor, query_start: int | None = None) -> torch.Tensor:
    """Boolean mask (B, tgt, src), True = blocked (spec §4.4).

    The src tokens are S complete steps then the current (z, a): src = S*P + 2, stop is (B, S).
    The tgt tokens are src positions query_start .. query_start+tgt_len-1 (default: the last tgt_len; a
    static-shape K/V cache has later, not yet written positions, whose stops are ignored). (a) causal with
    a sliding window: a z/a query at p sees keys from p - (memory_length+1)*P, an r query from the z of
    memory_length steps earlier; (b) a query in step i never sees a key in step j if a stop occurred in
    steps [j, i-1]."""
    P, device = tokens_per_step, stop.device
    if stop.shape[1] * P + 2 != src_len:
        raise ValueError(f"stop vector of {stop.shape[1]} steps does not fit {src_len} tokens")
    start = src_len - tgt_len if query_start is None else query_start
    key = torch.arange(src_len, device=device)
    query = key[start:start + tgt_len]
    modality = query % P  # 0 = z, 1 = a, 2 = r
    lowest = torch.where(modality < 2, query - (memory_length + 1) * P, query - modality - memory_length * P)
    base = (key[None, :] > query[:, None]) | (key[None, :] < lowest[:, None])  # (tgt, src)
    # Stops between the key's step j and the query's step i: count[i] - count[j] with exclusive prefix sums.
    count = F.pad(stop.to(torch.int32).cumsum(1), (1, 0))  # (B, S+1)
    count = count[:, key // P]  # (B, src)
    boundary = count[:, query, None] > count[:, None, :]  # (B, tgt, src)
    return base[None] | boundary


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions: score = (q+u).k + (q+v).W_R R_{p-j},
    scaled by 1/sqrt(d_model) (the released code's scale, not 1/sqrt(d_head)).

    `fused` (the default) passes the positional term and the mask to PyTorch's scaled_dot_product_attention
    as one additive float bias (scale given explicitly, attention dropout inside the kernel). Otherwise, or
    when the probabilities are asked for (`need_weights`), they are materialised and `self.dropout` applies
    to them: the released code's form, and the one place attention scores are computed for figures."""

    def __init__(self, dim: int, num_heads: int, dropout: float, fused: bool = True):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = num_heads, dim // num_heads, 1 / math.sqrt(dim)
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.pos_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.fused = fused

    def forward(self, x: torch.Tensor, rel: torch.Tensor, u: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                past: torch.Tensor | LayerKV | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) new tokens; rel (S, D) sinusoids of distances 0..S-1; mask (B, T, S), True = blocked.
        `past` is what precedes x: nothing (x is the whole window), the layer's cached inputs (B, M, D) (the
        released layer-input memory), or the layer's K/V cache. Returns the output (B, T, D) and, with
        need_weights, the post-softmax, pre-dropout probabilities (B, heads, T, S)."""
        B, T, D = x.shape
        heads = (self.num_heads, self.head_dim)

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, n, D) -> (B, heads, n, head_dim)
            return t.reshape(B, t.shape[1], *heads).transpose(1, 2)

        if isinstance(past, LayerKV):
            q, k_new, v_new = (split(t) for t in self.qkv_proj(x).chunk(3, -1))
            start = past.query_start
            k, val = past.write(k_new, v_new)
        else:
            src_in = x if past is None else torch.cat([past, x], 1)
            q, k, val = (split(t) for t in self.qkv_proj(src_in).chunk(3, -1))
            q = q[:, :, -T:]
            start = src_in.shape[1] - T
        S = k.shape[2]  # the queries are source positions start .. start+T-1 (the last T unless static)
        r = self.pos_proj(rel).reshape(S, *heads).transpose(0, 1)  # (H, S, dh), row = distance
        by_distance = (q + v[:, None]) @ r.transpose(-1, -2)  # (B, H, T, distance)
        distance = (torch.arange(start, start + T, device=x.device)[:, None]
                    - torch.arange(S, device=x.device)[None, :]).clamp(min=0)  # (T, S), future keys masked
        position = by_distance.gather(-1, distance.expand(B, self.num_heads, T, S))
        probs = None
        if self.fused and not need_weights:
            bias = (position * self.scale).masked_fill(mask[:, None], float("-inf"))
            p = self.dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q + u[:, None], k, val, attn_mask=bias, dropout_p=p,
                                                 scale=self.scale)
        else:
            content = (q + u[:, None]) @ k.transpose(-1, -2)  # (B, H, T, S)
            scores = ((content + position) * self.scale).masked_fill(mask[:, None], float("-inf"))
            probs = scores.softmax(-1)
            out = self.dropout(probs) @ val
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D)), probs if need_weights else None


class TransformerXLLayer(nn.Module):
    """Post-LN layer: y = LN1(x + Drop(attn)); out = LN2(y + Drop(W2 Drop(SiLU(W1 y))))."""

    def __init__(self, dim: int, num_heads: int, feedforward_dim: int, dropout: float, fused: bool = True):
        super().__init__()
        self.self_attn = RelativeSelfAttention(dim, num_heads, dropout, fused)
        self.linear1 = nn.Linear(dim, feedforward_dim)
        self.linear2 = nn.Linear(feedforward_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rel: torch.Tensor, u: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                past: torch.Tensor | LayerKV | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, probs = self.self_attn(x, rel, u, v, mask, past, need_weights)
        y = self.norm1(x + self.dropout(attn))
        ff = self.dropout(self.linear2(self.dropout(F.silu(self.linear1(y)))))
        return self.norm2(y + ff), probs


class TransformerOutput(NamedTuple):
    """One pass: outputs (B, T, D); the new layer-input memory (per layer (B, <=memory_tokens, D), empty
    unless asked); per-layer attention probabilities (B, heads, T, S) (empty unless asked); the mask."""

    hidden: torch.Tensor
    memory: list[torch.Tensor]
    attention: list[torch.Tensor]
    mask: torch.Tensor


def source_length(past: list[torch.Tensor] | KVCache | None, new_tokens: int) -> int:
    """Source positions a pass over `new_tokens` attends over (reserving room in a K/V cache)."""
    if isinstance(past, KVCache):
        return past.source_length(new_tokens)
    return new_tokens + (0 if past is None else past[0].shape[1])


def query_start(past: list[torch.Tensor] | KVCache | None, src: int, new_tokens: int) -> int:
    """Source position of a pass's first new token: after the committed tokens of a K/V cache, else the
    last `new_tokens` of the `src` source positions."""
    return past.length if isinstance(past, KVCache) else src - new_tokens


class TransformerXL(nn.Module):
    """Stack of layers with u, v shared across layers, over new tokens after an optional past: nothing,
    a K/V cache, or (the released form, kept for parity checks) a per-layer memory of cached layer inputs."""

    def __init__(self, dim: int, num_heads: int, feedforward_dim: int, num_layers: int, dropout: float,
                 max_tokens: int, fused: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(
            [TransformerXLLayer(dim, num_heads, feedforward_dim, dropout, fused) for _ in range(num_layers)])
        self.u = nn.Parameter(torch.empty(num_heads, dim // num_heads))
        self.v = nn.Parameter(torch.empty(num_heads, dim // num_heads))
        nn.init.xavier_uniform_(self.u)
        nn.init.xavier_uniform_(self.v)
        self.register_buffer("sinusoids", sinusoid_table(max_tokens, dim), persistent=False)
        self.pos_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: list[torch.Tensor] | KVCache | None = None,
                memory_tokens: int = 0, need_weights: bool = False) -> TransformerOutput:
        """x (B, T, D), mask (B, T, src) with src = `source_length(past, T)`. With layer-input memory, the new
        memory of each layer is the last memory_tokens of [old memory; layer input], detached; with a K/V
        cache the new keys and values are committed to it."""
        T, src = x.shape[1], mask.shape[-1]
        if src != source_length(past, T):
            raise ValueError(f"mask over {src} source positions does not fit {T} new tokens after the past")
        if src > self.sinusoids.shape[0]:  # longer rollouts (vanilla recompute, long imagination)
            self.sinusoids = sinusoid_table(2 * src, x.shape[-1]).to(self.sinusoids)
        rel = self.pos_dropout(self.sinusoids[:src])
        new_memory, attention, out = [], [], x
        for i, layer in enumerate(self.layers):
            if isinstance(past, KVCache):
                layer_past = past.layer(i)
            else:
                layer_past = None if past is None else past[i]
                if memory_tokens > 0:
                    cat = out if layer_past is None else torch.cat([layer_past, out], 1)
                    new_memory.append(cat[:, -memory_tokens:].detach())
            out, probs = layer(out, rel, self.u, self.v, mask, layer_past, need_weights)
            if need_weights:
                attention.append(probs)
        if isinstance(past, KVCache):
            past.commit(T)
        return TransformerOutput(out, new_memory, attention, mask)


# ---------------------------------------------------------------------------------------- heads
class Head(nn.Module):
    """SiLU pre-activation, hidden Linear -> SiLU -> Dropout, final Linear (spec §4.5)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float,
                 final_bias: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.SiLU()]
        dims = (in_dim, *hidden)
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [init_layer(nn.Linear(d_in, d_out), math.sqrt(2)), nn.SiLU(), nn.Dropout(dropout)]
        layers.append(init_layer(nn.Linear(dims[-1], out_dim), 1.0, final_bias))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class DynamicsModel(nn.Module):
    """psi: embeds (z, a, r) tokens, runs the Transformer-XL, predicts z_{t+1}, r_t, gamma_t from h_t.

    `fused_attention` chooses the attention kernel (see RelativeSelfAttention); both give the same numbers."""

    def __init__(self, config: Config, num_actions: int, fused_attention: bool = True):
        super().__init__()
        cfg, obs = config.dyn, config.obs
        if cfg.input_discounts:
            raise ConfigError("dyn.input_discounts=True is not supported (the released runs use False)")
        D = cfg.embed_dim
        self.num_categoricals, self.num_classes = obs.num_categoricals, obs.num_classes
        latent_dim = obs.num_categoricals * obs.num_classes
        self.input_rewards = cfg.input_rewards
        self.tokens_per_step = 3 if cfg.input_rewards else 2
        self.memory_length = cfg.memory_length
        self.memory_tokens = cfg.memory_length * self.tokens_per_step + 2
        # Covers training windows, XL memory + 3 new tokens, the vanilla recompute over a whole horizon
        # and the policy's real-history window; longer uses grow the table on demand.
        longest = max(config.wm.sequence_length, cfg.memory_length, config.ac.horizon)
        max_tokens = (longest + 2) * 3 + 2

        self.z_embed = nn.Sequential(init_layer(nn.Linear(latent_dim, D), math.sqrt(2)), nn.SiLU())
        self.a_embed = nn.Embedding(num_actions, D)
        self.r_embed = (nn.Sequential(init_layer(nn.Linear(1, D), math.sqrt(2)), nn.SiLU())
                        if cfg.input_rewards else None)
        self.transformer = TransformerXL(D, cfg.num_heads, cfg.feedforward_dim, cfg.num_layers, cfg.dropout,
                                         max_tokens, fused_attention)
        self.latent_head = Head(D, cfg.latent_head_hidden, latent_dim, cfg.dropout)
        self.reward_head = Head(D, cfg.reward_head_hidden, 1, cfg.dropout)
        # 0.99 as a *logit* (initial gamma_hat ~ 0.73): the released behaviour (spec §16.9).
        self.discount_head = Head(D, cfg.discount_head_hidden, 1, cfg.dropout, final_bias=0.99)

    # ----------------------------------------------------------------------------- tokens
    def step_tokens(self, z: torch.Tensor, a: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        """Embed complete steps: z (B, S, C*K), a (B, S), r (B, S) -> (B, S*P, D) in order z, a, r."""
        parts = [self.z_embed(z), self.a_embed(a)]
        if self.input_rewards:
            parts.append(self.r_embed(r[..., None]))
        return torch.stack(parts, 2).flatten(1, 2)

    def current_tokens(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Embed the current (z, a): z (B, C*K), a (B,) -> (B, 2, D)."""
        return torch.stack([self.z_embed(z), self.a_embed(a)], 1)

    def reward_token(self, r: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1, D), or an empty (B, 0, D) without reward inputs."""
        if not self.input_rewards:
            return self.a_embed.weight.new_zeros(r.shape[0], 0, self.a_embed.embedding_dim)
        return self.r_embed(r[:, None, None])

    def run(self, tokens: torch.Tensor, stop: torch.Tensor, past: list[torch.Tensor] | KVCache | None = None,
            keep_memory: bool = False, need_weights: bool = False) -> TransformerOutput:
        """Transformer over new tokens (B, T, D) after `past` (nothing, a K/V cache, or the released
        layer-input memory); stop (B, S) covers every complete step of the source positions (a static K/V
        cache's not yet written steps too: any value, they are future keys). keep_memory returns the new
        layer-input memory, need_weights every layer's attention probabilities."""
        T = tokens.shape[1]
        src = source_length(past, T)
        mask = attention_mask(src, T, self.tokens_per_step, self.memory_length, stop, query_start(past, src, T))
        return self.transformer(tokens, mask, past, self.memory_tokens if keep_memory else 0, need_weights)

    def new_cache(self, batch: int, steps: int, device: torch.device, static: bool = False) -> KVCache:
        """An empty K/V cache sized for the 2 context tokens plus `steps` imagined steps (`static`: every
        pass attends over all of it, see twm/kv_cache.py)."""
        attn = self.transformer.layers[0].self_attn
        return KVCache(len(self.transformer.layers), batch, attn.num_heads, attn.head_dim,
                       2 + steps * self.tokens_per_step, device, self.transformer.u.dtype, static)

    def window_tokens(self, z: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """A whole window's tokens: z (B, T+1, C*K), a (B, T+1), r (B, T) -> (B, T*P + 2, D)."""
        T = z.shape[1] - 1
        return torch.cat([self.step_tokens(z[:, :T], a[:, :T], r), self.current_tokens(z[:, T], a[:, T])], 1)

    def forward(self, z: torch.Tensor, a: torch.Tensor, r: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
        """Full pass over a window without memory: z (B, T+1, C*K), a (B, T+1), r (B, T), stop (B, T)
        -> h (B, T+1, D), the outputs at the a tokens."""
        return self.run(self.window_tokens(z, a, r), stop).hidden[:, 1::self.tokens_per_step]

    # ----------------------------------------------------------------------------- heads
    def predict(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (..., D) -> next-latent logits (..., C, K), reward mean (...), discount logit (...)."""
        logits = self.latent_head(h).unflatten(-1, (self.num_categoricals, self.num_classes))
        return logits, self.reward_head(h)[..., 0], self.discount_head(h)[..., 0]


# ----------------------------------------------------------------------------------------- loss
def discount_targets(terminated: torch.Tensor, gamma: float, dtype: torch.dtype) -> torch.Tensor:
    """g = gamma * NOT terminated: 0 only for a termination; a truncation keeps gamma (spec §0)."""
    return gamma * (~terminated).to(dtype)


def latent_weights(dones: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """w = NOT d: the first observation of a new episode is never a latent target (spec §4.6)."""
    return (~dones).to(dtype)


def dynamics_loss(latent_logits: torch.Tensor, reward_mean: torch.Tensor, discount_logit: torch.Tensor,
                  target_logits: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
                  dones: torch.Tensor, config: Config) -> dict[str, torch.Tensor]:
    """Spec §4.6 over (B, T) predictions: latent CE weighted by NOT d (Sum w CE / Sum w), reward
    coef * Normal NLL, discount coef * BCE with soft targets gamma * NOT terminated (0.99 or 0).
    "dyn/loss" is the sum. With latent_coef 0 the latent term is left out of the graph, as in the released
    code (which never adds it, spec §4.6), so the latent head gets no gradient at all."""
    cfg = config.dyn
    if cfg.latent_coef:
        q = target_logits.detach().softmax(-1)
        ce = -(q * latent_logits.log_softmax(-1)).sum((-1, -2))  # (B, T)
        w = latent_weights(dones, ce.dtype)
        latent = cfg.latent_coef * (w * ce).sum() / w.sum().clamp(min=1.0)
    else:
        latent = reward_mean.new_zeros(())
    reward = cfg.reward_coef * (0.5 * (rewards - reward_mean).square() + 0.5 * _LOG_2PI).mean()
    g = discount_targets(terminated, config.ac.gamma, discount_logit.dtype)
    discount = cfg.discount_coef * F.binary_cross_entropy_with_logits(discount_logit, g)
    return {"dyn/loss": latent + reward + discount, "dyn/latent_loss": latent, "dyn/reward_loss": reward,
            "dyn/discount_loss": discount}
