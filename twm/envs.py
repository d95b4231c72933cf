"""The Atari environment protocol of TWM (spec §2) on gymnasium 1.x + ale-py 0.12.

`make_env` builds the training (or evaluation) env of §2.1/§2.4: raw ALE -> AtariPreprocessing ->
[FireAfterLifeLoss -> NoopStart for FIRE games] -> EpisodicLives -> FrameStackObservation -> TimeLimit.
A life loss ends a learning episode without restarting the game (§2.2). `evaluate` plays whole games
(all lives, no no-ops) in lock-step rounds with the seed rule of §2.3. "Catch" (twm/catch.py) is a toy
task with the same contract for quick learning checks.
"""

from __future__ import annotations

from typing import Any, Protocol

import ale_py
import gymnasium as gym
import numpy as np
from ale_py.env import AtariEnv
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TimeLimit
from tqdm import tqdm

from twm import run_record
from twm.catch import ACTIONS as CATCH_ACTIONS
from twm.catch import SIZE as CATCH_SIZE
from twm.catch import CatchEnv
from twm.config import EnvConfig
from twm.games import get_game

# Only ALE errors reach stderr: its banner would break the one-line error contract of the CLIs.
ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)

CATCH = "Catch"
NOOP, FIRE = 0, 1


def num_actions(game: str) -> int:
    """Size of the game's minimal action set (spec §2.6), or 3 for Catch."""
    return len(CATCH_ACTIONS) if game == CATCH else get_game(game).num_actions


def _lives(env: gym.Env) -> int:
    """The current lives counter of the innermost game (ALE or Catch)."""
    unwrapped = env.unwrapped
    return unwrapped.ale.lives() if isinstance(unwrapped, AtariEnv) else unwrapped.lives


# --- §2.1 step 3: FIRE games ------------------------------------------------------------------------


class FireAfterLifeLoss(gym.Wrapper):
    """FIRE then action 2 on reset, and one FIRE right after every life loss (baselines FireReset)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if meanings[FIRE] != "FIRE" or len(meanings) < 3:
            raise ValueError(f"FireAfterLifeLoss needs action 1 = FIRE and >= 3 actions, got {meanings}")
        self.lives = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        for action in (FIRE, 2):
            obs, _, terminated, truncated, _ = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(seed=seed, options=options)
        self.lives = _lives(self.env)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = _lives(self.env)
        if lives < self.lives:  # one extra FIRE folded into this step (released code: even at game over)
            obs, fire_reward, fire_terminated, fire_truncated, fire_info = self.env.step(FIRE)
            reward += fire_reward
            terminated = terminated or fire_terminated
            truncated = truncated or fire_truncated
            info.update(fire_info)
        self.lives = lives
        return obs, reward, terminated, truncated, info


class NoopStart(gym.Wrapper):
    """1..noop_max NOOPs after the (FIRE) reset, drawn from `unwrapped.np_random`; restart on a game end."""

    def __init__(self, env: gym.Env, noop_max: int):
        super().__init__(env)
        self.noop_max = noop_max

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        noops = self.env.unwrapped.np_random.integers(1, self.noop_max + 1) if self.noop_max > 0 else 0
        for _ in range(noops):
            obs, _, terminated, truncated, step_info = self.env.step(NOOP)
            info.update(step_info)
            if terminated or truncated:
                obs, info = self.env.reset(seed=seed, options=options)
        return obs, info


# --- §2.1 step 4: a life loss is an episode end for learning, not a game reset ---------------------


class EpisodicLives(gym.Wrapper):
    """terminated=True on a life loss (if lives remain); reset() then only takes one NOOP step.

    A real reset (with the given seed) happens only after a real game end of the inner env, or with
    `options={"force": True}`; otherwise the seed is ignored. A TimeLimit truncation happens outside
    this wrapper, so it is not a real end (spec §2.2 quirk, kept).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.was_real_done = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self.was_real_done or (options or {}).get("force", False):
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, _, _, info = self.env.step(NOOP)  # its reward is discarded
        self.lives = _lives(self.env)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.was_real_done = terminated or truncated
        lives = _lives(self.env)
        if 0 < lives < self.lives:  # lives > 0: special case for Qbert
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info


# --- §2.1 / §2.4: the stack ------------------------------------------------------------------------


def make_env(game: str, env_cfg: EnvConfig, *, evaluation: bool = False) -> gym.Env:
    """The training env of spec §2.1 (evaluation=True: the same without no-op starts, §2.3).

    Observations are uint8 (frame_stack, 64, 64), oldest frame first; rewards are raw; info has 'lives'.
    """
    noop_max = 0 if evaluation else env_cfg.noop_max
    if game == CATCH:
        if env_cfg.screen_size != CATCH_SIZE:
            raise ValueError(f"Catch frames are {CATCH_SIZE}x{CATCH_SIZE}, not {env_cfg.screen_size}")
        env: gym.Env = CatchEnv()
    else:
        spec = get_game(game)
        env = AtariEnv(
            game=spec.rom,
            frameskip=1,
            repeat_action_probability=env_cfg.sticky_action_prob,
            full_action_space=False,
            max_num_frames_per_episode=None,
        )
        env = AtariPreprocessing(
            env,
            noop_max=0 if spec.fire else noop_max,
            frame_skip=env_cfg.frame_skip,
            screen_size=env_cfg.screen_size,
            terminal_on_life_loss=False,
            grayscale_obs=True,
            grayscale_newaxis=False,
            scale_obs=False,
        )
        if spec.fire:
            env = FireAfterLifeLoss(env)
            if noop_max > 0:
                env = NoopStart(env, noop_max)
    if env_cfg.episodic_lives:
        env = EpisodicLives(env)
    env = FrameStackObservation(env, stack_size=env_cfg.frame_stack, padding_type="reset")
    return TimeLimit(env, max_episode_steps=env_cfg.time_limit)


# --- §2.3: evaluation ------------------------------------------------------------------------------


class Policy(Protocol):
    """What `evaluate` drives: a batched policy that may keep per-env state."""

    def act(self, obs: np.ndarray) -> np.ndarray: ...  # (B, 4, 64, 64) uint8 -> (B,) int array-like

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None: ...  # (B,) transformed, (B,) bool

    def reset(self, i: int) -> None: ...  # env i starts a new game


class RandomPolicy:
    """Uniform random actions from a seeded generator (a baseline and a test double for `evaluate`)."""

    def __init__(self, num_actions: int, seed: int = 0):
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.integers(self.num_actions, size=len(obs))

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        pass

    def reset(self, i: int) -> None:
        pass


def eval_round_seeds(seed: int, num_envs: int, num_rounds: int) -> list[list[int]]:
    """Reset seeds of each evaluation round (spec §2.3): start (seed+13)*7919+13, env k gets s+k."""
    s = run_record.eval_start_seed(seed)
    rounds = []
    for _ in range(num_rounds):
        rounds.append([s + k for k in range(num_envs)])
        s = run_record.next_eval_seed(s, num_envs)
    return rounds


def evaluate(
    game: str,
    env_cfg: EnvConfig,
    policy: Policy,
    num_episodes: int,
    num_envs: int,
    seed: int,
    progress: bool = False,
) -> np.ndarray:
    """Raw whole-game scores of `num_episodes` evaluation games (spec §2.3), float64 (num_episodes,).

    B = min(num_envs, num_episodes) envs are stepped in lock-step in this process. Life losses never
    reset an env; an env is finished when truncated or terminated with lives == 0, then it idles
    (its observation is frozen, its reward is 0 and its done is True) until all B are finished; only
    then all are reset with new seeds. Scores of a round are kept in env order, the first num_episodes.
    """
    if num_episodes < 1 or num_envs < 1:
        raise ValueError(f"evaluate needs num_episodes, num_envs >= 1; got {num_episodes}, {num_envs}")
    num_envs = min(num_envs, num_episodes)
    num_rounds = -(-num_episodes // num_envs)
    transform = np.tanh if env_cfg.reward_transform == "tanh" else (lambda r: r)
    envs = [make_env(game, env_cfg, evaluation=True) for _ in range(num_envs)]
    scores: list[float] = []
    try:
        with tqdm(total=num_episodes, desc=f"eval {game}", unit="game", disable=not progress) as bar:
            for seeds in eval_round_seeds(seed, num_envs, num_rounds):
                pairs = zip(envs, seeds, strict=True)
                obs = np.stack([env.reset(seed=s, options={"force": True})[0] for env, s in pairs])
                # obs: (B, 4, 64, 64) uint8
                for i in range(num_envs):
                    policy.reset(i)
                score = np.zeros(num_envs)
                finished = np.zeros(num_envs, dtype=bool)
                while not finished.all():
                    actions = np.asarray(policy.act(obs.copy()))  # (B,); the policy may keep the array
                    rewards = np.zeros(num_envs)
                    dones = np.ones(num_envs, dtype=bool)
                    for i in np.flatnonzero(~finished):
                        obs[i], rewards[i], terminated, truncated, info = envs[i].step(int(actions[i]))
                        dones[i] = terminated or truncated
                        if truncated or (terminated and info["lives"] == 0):
                            finished[i] = True
                            bar.update(int(len(scores) + finished.sum() <= num_episodes))
                    score += rewards
                    policy.observe(transform(rewards), dones)
                scores.extend(score.tolist())
    finally:
        for env in envs:
            env.close()
    return np.asarray(scores[:num_episodes], dtype=np.float64)
