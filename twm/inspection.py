"""Looking inside a trained world model (paper Fig. 2, 5, 6, 9-14): load a checkpoint, imagine from real
buffer start states with `twm.imagination.Imagination`, capture attention, and hand plain numpy arrays to
`analysis.attention` (attention-rollout maths) and `analysis.wm_figures` (drawing).

Imagined rollouts for figures differ from training imagination (spec §7) in two deliberate ways:
an imagined step counts as an episode end when its own predicted discount gamma_hat < 0.5 (not when the
cumulative product falls below dyn.discount_threshold, which would cut every rollout after ~230 steps),
and actions may be given (the real ones from the buffer, so imagined and real frames are comparable).

Attention maps (spec §14). The trajectory is imagined *without memory* (the "vanilla" imagination: the whole
token history is re-processed every step, which gives the same hidden states as the XL memory), so every
layer's full (tokens x tokens) attention matrix exists; the attention layers return their probabilities
(need_weights), so nothing here recomputes them. Heads are averaged, as in the released renderer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from twm import imagination
from twm.actor_critic import sample_action
from twm.agent import Agent, eval_mode
from twm.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from twm.config import Config
from twm.imagination import FixedActions, Imagination, RestartPool, StartStates
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
        buffer = ReplayBuffer(int(buffer_state["size"]), tuple(buffer_state["obs"].shape[1:]), device)
        buffer.load_state_dict(buffer_state)
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


# ------------------------------------------------------------------------------------ imagination
class StepAttention(NamedTuple):
    """One imagined step's attention over the whole token history (numpy): what `analysis.attention` takes."""

    attention: np.ndarray  # float32 (M, layers, N, N): head-averaged post-softmax probabilities
    mask: np.ndarray  # bool (M, N, N), True = blocked
    rewards: np.ndarray  # (M, S): rewards of the S complete steps (the r tokens)
    actions: np.ndarray  # int64 (M, S+1): the a tokens' actions, the current one last


@dataclass
class Rollout:
    """M imagined trajectories of H steps from one real start (plain numpy)."""

    start: int  # buffer index of the first imagined state (context step start-1)
    stacks: np.ndarray  # float32 (M, H+1, 4, 64, 64): decoded frame stacks in [0, 1]
    actions: np.ndarray  # int64 (M, H): action taken in state t
    rewards: np.ndarray  # float32 (M, H): predicted (tanh-scale) reward of step t
    discounts: np.ndarray  # float32 (M, H): predicted gamma_hat of step t
    dones: np.ndarray  # bool (M, H): imagined episode end after step t (state t+1 is a restart)
    attention: list[StepAttention] | None = None  # per imagined step, with attention=True

    @property
    def frames(self) -> np.ndarray:
        """(M, H+1, 64, 64): the newest frame of each decoded stack."""
        return self.stacks[:, :, -1]


def _pixels(obs: torch.Tensor) -> torch.Tensor:
    return obs.float() / 255.0


@torch.no_grad()
def imagine(run: LoadedRun, start: int, horizon: int, samples: int = 1, actions: np.ndarray | None = None,
            attention: bool = False, seed: int = 0) -> Rollout:
    """Imagine `horizon` steps from buffer state `start` (>= 1), `samples` times.

    actions (H,): fixed actions for every sample (e.g. the real ones); None: sampled from the policy.
    attention: recompute the full history each step and keep each step's attention (`Rollout.attention`)."""
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
    one = StartStates(z_context=sample_latent(agent.encode_logits(buffer.obs[k:k + 1])),  # (1, C*K)
                      a_context=buffer.actions[k:k + 1].to(device),
                      r_context=buffer.rewards[k:k + 1].to(device),
                      d_context=(buffer.terminated[k:k + 1] | buffer.truncated[k:k + 1]).to(device),
                      z=sample_latent(agent.encode_logits(buffer.obs[start:start + 1])))
    starts = one.repeat(samples)  # one shared start state
    restarts = RestartPool(agent.encode_logits(buffer.sample_obs(64)))  # (R, C, K) pool, as in training
    world = Imagination(dyn, cfg, restarts, memory="vanilla" if attention else "kv_cache",
                        terminal_discount=TERMINAL_DISCOUNT, need_weights=attention)

    def sampled(x: torch.Tensor) -> torch.Tensor:
        return sample_action(agent.actor(x))

    policy = sampled if actions is None else FixedActions(torch.as_tensor(np.asarray(actions[:horizon]), device=device))
    with eval_mode(dyn, agent.actor, obs_model):
        trajectory = imagination.imagine(world, policy, starts, horizon, cfg.ac.input_h)
        stacks = obs_model.decode(trajectory.z).clamp(0, 1)  # (M, H+1, 4, 64, 64)
    torch.set_rng_state(generator_state)

    steps = None
    if attention:
        rewards = torch.cat([starts.r_context[:, None], trajectory.rewards], 1).cpu().numpy()  # (M, H+1)
        acts = torch.cat([starts.a_context[:, None], trajectory.actions], 1).cpu().numpy()  # (M, H+1)
        steps = [StepAttention(attention=torch.stack([p.mean(1) for p in probs], 1).float().cpu().numpy(),
                               mask=mask.cpu().numpy(), rewards=rewards[:, :t + 1], actions=acts[:, :t + 2])
                 for t, (probs, mask) in enumerate(world.attention)]

    def np_(x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy().astype(np.float32) if x.is_floating_point() else x.cpu().numpy()

    return Rollout(start=start, stacks=np_(stacks), actions=np_(trajectory.actions), rewards=np_(trajectory.rewards),
                   discounts=np_(trajectory.discounts), dones=np_(trajectory.dones), attention=steps)


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

