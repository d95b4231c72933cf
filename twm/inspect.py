"""Looking inside a trained world model (paper Fig. 2, 5, 6, 9-14): load a checkpoint, imagine from real
buffer start states, capture attention, and hand plain numpy arrays to `analysis.wm_figures`.

Imagined rollouts for figures differ from training imagination (spec §7) in two deliberate ways:
an imagined step counts as an episode end when its own predicted discount gamma_hat < 0.5 (not when the
cumulative product falls below dyn.discount_threshold, which would cut every rollout after ~230 steps),
and actions may be given (the real ones from the buffer, so imagined and real frames are comparable).

Attention maps (spec §14). The trajectory is imagined *without memory* (the whole token history is
re-processed every step, which gives the same hidden states as the XL memory), so every layer's full
(tokens x tokens) attention matrix exists. Forward pre-hooks on each layer's `self_attn` capture its
inputs; `attention_probs` recomputes the post-softmax probabilities from the layer's own parameters
(tested to reproduce the layer's output). Heads are averaged, as in the released renderer.

Attention rollout adapted to the causal and episode masks (`attention_rollout`): per layer,
A'_l = alpha * A_l + (1 - alpha) * I with alpha = 0.5 (the residual connection), masked keys set to 0 and
each row renormalised over its unmasked keys, then R_l = A'_l R_{l-1} (R_0 = I). The map of layer l is
the row of the current a token in R_l. Because the diagonal is never masked and masked entries stay
zero, mass never crosses an episode boundary (a stop blocks every path), while the sliding window only
limits direct attention: a token just outside the a token's window can still receive mass through
intermediate tokens. The plotted window is what the a token sees directly (the a, r of step t-m-1,
m = memory_length complete steps, the current z, a); the rollout mass on older tokens is `outside`."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from twm.actor_critic import sample_action
from twm.agent import Agent, eval_mode
from twm.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from twm.config import Config
from twm.dynamics_model import RelativeSelfAttention
from twm.imagination import Imagination
from twm.observation_model import sample_latent
from twm.replay import ReplayBuffer

TERMINAL_DISCOUNT = 0.5  # gamma_hat below this marks an imagined episode end (targets are 0.99 or 0)


# ------------------------------------------------------------------------------------ loading
@dataclass
class LoadedRun:
    """A checkpoint rebuilt: config, agent (eval mode, CPU unless asked) and replay buffer."""

    path: Path
    config: Config
    game: str
    seed: int
    agent: Agent
    buffer: ReplayBuffer
    env_step: int


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run directory (its newest checkpoint), or its checkpoints/ folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (give a checkpoint file or a run directory)")
    for run_dir in (path, path.parent):
        checkpoints = list_checkpoints(run_dir)
        if checkpoints:
            return checkpoints[-1]
    raise CheckpointError(f"{path} holds no checkpoints (expected {path}/checkpoints/ckpt-*.pt)")


def load_run(path: Path, device: str = "cpu") -> LoadedRun:
    """Rebuild the agent and the replay buffer of a checkpoint; CheckpointError on a bad file."""
    file = resolve_checkpoint(path)
    state = load_checkpoint(file, map_location=device)
    try:
        config = Config.from_json(state["config"])
        game, seed = str(state["game"]), int(state["seed"])
        num_actions = state["agent"]["dyn_model.a_embed.weight"].shape[0]
        agent = Agent(config, num_actions, device)
        agent.load_state_dict(state["agent"])
        buffer_state = state["buffer"]
        buffer = ReplayBuffer(int(buffer_state["size"]), tuple(buffer_state["obs_shape"]), device)
        buffer.load_state_dict(buffer_state, file.parent)
    except (KeyError, RuntimeError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {file} does not hold a usable agent and buffer "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    if buffer.size < 2:
        raise CheckpointError(f"checkpoint {file} has only {buffer.size} buffer transitions; need 2 or more")
    agent.eval()
    return LoadedRun(file, config, game, seed, agent, buffer, buffer.size)


def action_names(game: str, num_actions: int) -> list[str]:
    """ALE action meanings of the game's minimal action set (numbers for non-Atari tasks)."""
    from twm.envs import make_env
    from twm.games import GAMES

    if game not in GAMES:
        return [str(a) for a in range(num_actions)]
    env = make_env(game, Config().env)
    names = list(env.unwrapped.get_action_meanings())
    env.close()
    return names if len(names) == num_actions else [str(a) for a in range(num_actions)]


def choose_start(buffer: ReplayBuffer, horizon: int, rng: np.random.Generator) -> int:
    """A buffer index s >= 1 whose real continuation s-1 .. s+horizon-1 has no episode end (the longest
    clean stretch if none is long enough); imagination starts at obs[s] with context step s-1."""
    size = buffer.size
    ends = (buffer.terminated[:size] | buffer.truncated[:size]).cpu().numpy()
    horizon = min(horizon, size - 1)
    window = np.convolve(ends.astype(np.int64), np.ones(horizon + 1, dtype=np.int64), "valid")  # s-1 ..
    clean = np.flatnonzero(window == 0) + 1
    clean = clean[clean + horizon <= size]
    if len(clean) > 0:
        return int(rng.choice(clean))
    return int(np.argmin(window[: size - horizon])) + 1


# ------------------------------------------------------------------------------------ attention
def _keys_values(module: RelativeSelfAttention, x: torch.Tensor, memory: torch.Tensor | None,
                 cache: tuple | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (B, H, T, dh), keys and values (B, H, S, dh) of one layer, as its forward builds them: from
    [memory; x], or from a K/V cache (k buffer, v buffer, position) that the forward has already written."""
    B, T, D = x.shape
    H, dh = module.num_heads, module.head_dim
    if cache is None:
        src_in = x if memory is None else torch.cat([memory, x], 1)
        S = src_in.shape[1]
        q, k, val = module.qkv_proj(src_in).chunk(3, -1)
        k = k.reshape(B, S, H, dh).transpose(1, 2)
        val = val.reshape(B, S, H, dh).transpose(1, 2)
        q = q[:, S - T:]
    else:
        k_buffer, v_buffer, start = cache
        q = module.qkv_proj(x).chunk(3, -1)[0]
        k, val = k_buffer[:, :, :start + T], v_buffer[:, :, :start + T]
    return q.reshape(B, T, H, dh).transpose(1, 2), k, val


def attention_probs(module: RelativeSelfAttention, x: torch.Tensor, memory: torch.Tensor | None,
                    rel: torch.Tensor, u: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                    cache: tuple | None = None) -> torch.Tensor:
    """Post-softmax attention probabilities (B, H, T, S) of one layer, from its own parameters."""
    B, T, _ = x.shape
    q, k, _ = _keys_values(module, x, memory, cache)
    S, H, dh = k.shape[2], module.num_heads, module.head_dim
    r = module.pos_proj(rel[:S]).reshape(S, H, dh).transpose(0, 1)  # (H, distance, dh)
    content = (q + u[:, None]) @ k.transpose(-1, -2)  # (B, H, T, S)
    by_distance = (q + v[:, None]) @ r.transpose(-1, -2)  # (B, H, T, distance)
    distance = (torch.arange(S - T, S)[:, None] - torch.arange(S)[None, :]).clamp(min=0).to(x.device)
    position = by_distance.gather(-1, distance.expand(B, H, T, S))
    scores = ((content + position) * module.scale).masked_fill(mask[:, None], float("-inf"))
    return scores.softmax(-1)


def attention_output(module: RelativeSelfAttention, probs: torch.Tensor, x: torch.Tensor,
                     memory: torch.Tensor | None, cache: tuple | None = None) -> torch.Tensor:
    """The layer's output from given probabilities (B, H, T, S): out_proj(probs @ values), (B, T, D)."""
    B, T, D = x.shape
    _, _, val = _keys_values(module, x, memory, cache)
    return module.out_proj((probs @ val).transpose(1, 2).reshape(B, T, D))


class AttentionRecorder:
    """Forward pre-hooks on every `self_attn` of a dynamics model; keeps each layer's last inputs (by name:
    x, memory, rel, u, v, mask and, with a K/V cache, cache) and output. Use as a context manager so the
    hooks are removed."""

    def __init__(self, dyn: torch.nn.Module | None):
        """dyn None: a recorder that records nothing (so callers need no second code path)."""
        self.modules = [] if dyn is None else [layer.self_attn for layer in dyn.transformer.layers]
        self.inputs: list[dict] = [{} for _ in self.modules]
        self.outputs: list[torch.Tensor | None] = [None for _ in self.modules]
        self._handles: list = []

    def __enter__(self) -> AttentionRecorder:
        for i, module in enumerate(self.modules):
            signature = inspect.signature(module.forward)

            def pre_hook(mod, args, kwargs, i=i, signature=signature):
                self.inputs[i] = dict(signature.bind(*args, **kwargs).arguments)

            def post_hook(mod, args, output, i=i):
                self.outputs[i] = output

            self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            self._handles.append(module.register_forward_hook(post_hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def probs(self) -> list[torch.Tensor]:
        """Per layer (B, H, T, S) probabilities of the last forward pass."""
        out = []
        for module, inp in zip(self.modules, self.inputs, strict=True):
            missing = {"x", "memory", "rel", "u", "v", "mask"} - inp.keys()
            if missing:
                raise RuntimeError(f"attention layer inputs lack {sorted(missing)}: the model's "
                                   "RelativeSelfAttention.forward signature changed; update twm.inspect")
            out.append(attention_probs(module, inp["x"], inp["memory"], inp["rel"], inp["u"], inp["v"],
                                       inp["mask"], inp.get("cache")))
        return out

    def mask(self) -> torch.Tensor:
        """The (B, T, S) boolean mask of the last pass (True = blocked)."""
        return self.inputs[0]["mask"]


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


# ------------------------------------------------------------------------------------ imagination
@dataclass
class Rollout:
    """M imagined trajectories of H steps from one real start (plain numpy)."""

    start: int  # buffer index of the first imagined state (context step start-1)
    stacks: np.ndarray  # float32 (M, H+1, 4, 64, 64): decoded frame stacks in [0, 1]
    actions: np.ndarray  # int64 (M, H): action taken in state t
    rewards: np.ndarray  # float32 (M, H): predicted (tanh-scale) reward of step t
    discounts: np.ndarray  # float32 (M, H): predicted gamma_hat of step t
    dones: np.ndarray  # bool (M, H): imagined episode end after step t (state t+1 is a restart)
    attention: dict[str, np.ndarray] | None = None  # `_window_maps` arrays with a leading step axis (H, ...)

    @property
    def frames(self) -> np.ndarray:
        """(M, H+1, 64, 64): the newest frame of each decoded stack."""
        return self.stacks[:, :, -1]


def _pixels(obs: torch.Tensor) -> torch.Tensor:
    return obs.float() / 255.0


def _window_maps(dyn, probs: list[torch.Tensor], mask: torch.Tensor, rewards: torch.Tensor,
                 actions: torch.Tensor) -> dict[str, np.ndarray]:
    """Raw (head-mean) and rollout rows of the final a token, per layer, over its direct window.

    Window W = (memory_length+1)*P + 1 tokens ending in the current (z, a); shorter histories are padded on
    the left with NaN. Returns raw, rollout (M, L, W), outside (M, L) rollout mass on older tokens, kinds
    (W,) 0 z / 1 a / 2 r, token rewards and actions (M, W) (NaN / -1 where not that kind)."""
    P = dyn.tokens_per_step
    W = (dyn.memory_length + 1) * P + 1
    A = torch.stack([p.mean(1) for p in probs], 1).double().cpu().numpy()  # (M, L, N, N)
    masks = mask.cpu().numpy()
    M, L, N, _ = A.shape
    n = min(W, N)
    raw = np.full((M, L, W), np.nan)
    roll = np.full((M, L, W), np.nan)
    outside = np.zeros((M, L))
    for m in range(M):
        rows = rollout_rows(A[m], masks[m])  # (L, N)
        raw[m, :, W - n:] = A[m, :, -1, N - n:]
        roll[m, :, W - n:] = rows[:, N - n:]
        outside[m] = rows[:, :N - n].sum(-1)
    # Token positions from the end: the current z, a; before them complete steps j = 1, 2, ... back.
    history = np.arange(W - 2)[::-1]  # 0 for the token just before the current z
    back_history = history // P + 1
    kinds = np.concatenate([P - 1 - history % P, [0, 1]])[:W]
    back = np.concatenate([back_history, [0, 0]])
    token_rewards = np.full((M, W), np.nan)
    token_actions = np.full((M, W), -1)
    r_np, a_np = rewards.cpu().numpy(), actions.cpu().numpy()  # (M, S) complete steps, (M, S+1) with current
    for pos in range(W - n, W):
        if kinds[pos] == 2:
            token_rewards[:, pos] = r_np[:, -back[pos]]
        elif kinds[pos] == 1:
            token_actions[:, pos] = a_np[:, -1 - back[pos]]
    return {"raw": raw, "rollout": roll, "outside": outside, "kinds": kinds, "token_rewards": token_rewards,
            "token_actions": token_actions}


@torch.no_grad()
def imagine(run: LoadedRun, start: int, horizon: int, samples: int = 1, actions: np.ndarray | None = None,
            attention: bool = False, seed: int = 0) -> Rollout:
    """Imagine `horizon` steps from buffer state `start` (>= 1), `samples` times.

    actions (H,): fixed actions for every sample (e.g. the real ones); None: sampled from the policy.
    attention: recompute the full history each step and record per-step attention maps
    (`attention` dict with arrays (H, M, ...), see `_window_maps`)."""
    agent, buffer, cfg = run.agent, run.buffer, run.config
    dyn, obs_model = agent.dyn_model, agent.obs_model
    if not 1 <= start < buffer.size:
        raise ValueError(f"start {start} must be in [1, {buffer.size - 1}]")
    if actions is not None and len(actions) < horizon:
        raise ValueError(f"{len(actions)} actions given for {horizon} imagined steps")
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    device = agent.device
    k = start - 1
    z_context = sample_latent(agent.encode_logits(buffer.obs[k:k + 1]))  # (1, C*K)
    z = sample_latent(agent.encode_logits(buffer.obs[start:start + 1])).repeat(samples, 1)  # (M, C*K)
    a_context = buffer.actions[k:k + 1].to(device).repeat(samples)
    r_prev = buffer.rewards[k:k + 1].to(device).repeat(samples)
    d_context = (buffer.terminated[k:k + 1] | buffer.truncated[k:k + 1]).to(device).repeat(samples)
    fixed = None if actions is None else torch.as_tensor(np.asarray(actions), device=device)

    restart_logits = agent.encode_logits(buffer.sample_obs(64))  # (R, C, K) pool, as in training
    world = Imagination(dyn, "vanilla" if attention else "xl")
    states, acts, rewards, discounts, dones, maps = [z], [], [], [], [], []
    past_rewards, past_actions = r_prev[:, None], a_context[:, None]  # (M, steps so far)
    with eval_mode(dyn, agent.actor, obs_model), AttentionRecorder(dyn if attention else None) as recorder:
        h = world.reset(z_context.repeat(samples, 1), a_context, d_context)
        for t in range(horizon):
            x = torch.cat([z, h], -1) if cfg.ac.input_h else z
            a = fixed[t].expand(samples) if fixed is not None else sample_action(agent.actor(x))
            h = world.step(r_prev, z, a)
            if attention:
                past_actions = torch.cat([past_actions, a[:, None]], 1)
                maps.append(_window_maps(dyn, recorder.probs(), recorder.mask(), past_rewards, past_actions))
            logits, r, g_logit = dyn.predict(h)
            g = torch.sigmoid(g_logit)
            d = g < TERMINAL_DISCOUNT
            restart = restart_logits[torch.randint(len(restart_logits), (samples,), device=device)]
            z = torch.where(d[:, None], sample_latent(restart), sample_latent(logits))
            world.end_step(d)
            past_rewards = torch.cat([past_rewards, r[:, None]], 1)
            states.append(z), acts.append(a), rewards.append(r), discounts.append(g), dones.append(d)
            r_prev = r
        zs = torch.stack(states, 1)  # (M, H+1, C*K)
        stacks = obs_model.decode(zs).clamp(0, 1)  # (M, H+1, 4, 64, 64)
    torch.set_rng_state(generator_state)

    def np_(xs: list[torch.Tensor]) -> np.ndarray:
        return torch.stack(xs, 1).cpu().numpy()

    attention_maps = None
    if maps:
        attention_maps = {key: np.stack([step[key] for step in maps]) for key in maps[0] if key != "kinds"}
        attention_maps["kinds"] = maps[0]["kinds"]
    return Rollout(start=start, stacks=stacks.cpu().numpy().astype(np.float32), actions=np_(acts),
                   rewards=np_(rewards).astype(np.float32), discounts=np_(discounts).astype(np.float32),
                   dones=np_(dones), attention=attention_maps)


@dataclass
class RealSegment:
    """The buffer's real continuation from `start`: states start .. start+H and the H steps between."""

    stacks: np.ndarray  # float32 (H+1, 4, 64, 64) in [0, 1]
    actions: np.ndarray  # int64 (H,)
    rewards: np.ndarray  # float32 (H,) tanh rewards
    dones: np.ndarray  # bool (H,)


def real_segment(run: LoadedRun, start: int, horizon: int) -> RealSegment:
    """Real frames, actions, rewards of buffer steps start .. start+horizon-1 (clipped to the buffer)."""
    buffer = run.buffer
    end = min(start + horizon, buffer.size)
    steps = slice(start, end)
    return RealSegment(stacks=_pixels(buffer.obs[start:end + 1]).cpu().numpy(),
                       actions=buffer.actions[steps].cpu().numpy(),
                       rewards=buffer.rewards[steps].cpu().numpy(),
                       dones=(buffer.terminated[steps] | buffer.truncated[steps]).cpu().numpy())


@torch.no_grad()
def reconstruct(run: LoadedRun, indices: np.ndarray) -> np.ndarray:
    """Decoded encoder-argmax reconstructions of buffer stacks: (n, 4, 64, 64) in [0, 1]."""
    agent = run.agent
    logits = agent.encode_logits(run.buffer.obs[torch.as_tensor(indices, dtype=torch.long)])
    with eval_mode(agent.obs_model):
        return agent.obs_model.decode(sample_latent(logits, "argmax")).clamp(0, 1).cpu().numpy()


# ------------------------------------------------------------------------------ balanced sampling
def simulate_sampling(entries: int, temperatures: tuple[float, ...], batch_size: int = 1,
                      length: int = 1, seed: int = 0) -> dict[float, np.ndarray]:
    """Selection counts per entry after growing a buffer to `entries`, one entry and one draw of
    `batch_size` starts per step through the real `ReplayBuffer.sample_starts` (paper Fig. 2).

    Returns temperature -> visits (entries - length + 1,); math.inf is uniform sampling."""
    counts = {}
    for tau in temperatures:
        torch.manual_seed(seed)
        buffer = ReplayBuffer(entries, (1,))
        for _ in range(entries):
            buffer.append(0, 0.0, False, False, np.zeros(1, dtype=np.uint8))
            if buffer.size - length + 1 >= batch_size:
                buffer.sample_starts(batch_size, length, tau)
        counts[tau] = buffer.visits[: entries - length + 1].numpy().copy()
    return counts

