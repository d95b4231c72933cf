"""The trainer's seeds follow twm.run_record's rules (spec §1, §2.2, §2.3), shown on a real short run of the
Catch pixel game: the training env's reset seeds form the chain (seed+1)*7979, s <- 3s+13 at every episode
end, and the evaluation games are reset with (seed+13)*7919+13 (+k for sub-env k, s <- 3s+13+B per round),
applied once. Catch's ball columns come from the reset seed, so every frame shows which seed was used."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from twm import run_record as rr
from twm.agent import Agent
from twm.checkpoint import list_checkpoints, load_checkpoint, set_rng_state
from twm.config import Config, EnvConfig
from twm.envs import evaluate, make_env, num_actions
from twm.replay import ReplayBuffer

GAME, SEED = "Catch", 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Prefill 200 random steps (4 games), pretraining, 30 main-loop steps, a final evaluation of 3 games on 2
    envs (2 rounds): about 15 s on 2 cores."""
    out = tmp_path_factory.mktemp("seeds") / "run"
    overrides = {"buffer.capacity": 230, "buffer.prefill": 200, "schedule.pretrain_budget": 1500,
                 "schedule.budget": 1500 + 30 * 112, "schedule.eval_every": 10_000,
                 "schedule.final_eval_episodes": 3, "runtime.eval_envs": 2}
    cmd = [sys.executable, "-m", "twm.cli", "run", "--game", GAME, "--seed", str(SEED), "--preset", "smoke",
           "--out", str(out), "--no-progress"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stdout[-3000:], result.stderr[-5000:])
    return out


def replay_training_env(env_cfg: EnvConfig, buffer: dict, seeds) -> tuple[bool, int]:
    """Step a fresh training env with the buffer's actions, resetting with `seeds` (a generator that is sent
    nothing and yields the next seed at each episode end); (every frame equals the buffer's, last seed)."""
    env = make_env(GAME, env_cfg)
    seed = next(seeds)
    obs, _ = env.reset(seed=seed)
    same = np.array_equal(obs, buffer["obs"][0].numpy())
    for i in range(int(buffer["size"])):
        obs, reward, terminated, truncated, _ = env.step(int(buffer["actions"][i]))
        same &= bool(terminated) == bool(buffer["terminated"][i]) and bool(truncated) == bool(buffer["truncated"][i])
        same &= math.isclose(math.tanh(reward), float(buffer["rewards"][i]), abs_tol=1e-6)
        if terminated or truncated:
            seed = next(seeds)
            obs, _ = env.reset(seed=seed)
        same &= np.array_equal(obs, buffer["obs"][i + 1].numpy())
    env.close()
    return same, seed


def chain(first: int, advance):
    seed = first
    while True:
        yield seed
        seed = advance(seed)


def test_training_resets_follow_the_seed_chain(run_dir):
    path = list_checkpoints(run_dir)[-1]
    ckpt = load_checkpoint(path)
    config, buffer = Config.from_json(ckpt["config"]), ckpt["buffer"]
    frames = ReplayBuffer(int(buffer["size"]), tuple(buffer["obs_shape"]))
    frames.load_state_dict(buffer, path.parent)  # the replay frames live in files beside the checkpoint
    buffer = buffer | {"obs": frames.obs}
    assert int(buffer["terminated"][: int(buffer["size"])].sum()) >= 30  # several games, so several resets
    same, last = replay_training_env(config.env, buffer, chain(rr.train_reset_seed(SEED), rr.next_reset_seed))
    assert same
    assert json.loads(ckpt["state"])["reset_seed"] == last  # the checkpointed chain position
    # The replay can tell seeds apart: a chain that never advances does not give these frames.
    assert not replay_training_env(config.env, buffer, chain(rr.train_reset_seed(SEED), lambda s: s))[0]


class Noop:
    """A ball-blind policy: always NOOP, so its score depends only on the ball columns, i.e. the reset seed."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(len(obs), dtype=np.int64)

    def observe(self, rewards, dones):
        pass

    def reset(self, i):
        pass


def noop_game(env_cfg: EnvConfig, seed: int) -> float:
    env = make_env(GAME, env_cfg, evaluation=True)
    env.reset(seed=seed, options={"force": True})
    total = 0.0
    while True:
        _, reward, terminated, truncated, info = env.step(0)
        total += reward
        if truncated or (terminated and info["lives"] == 0):
            return total


def test_evaluation_games_are_reset_with_the_evaluation_seed_rule():
    env_cfg, episodes, envs = EnvConfig(), 6, 2
    scores = evaluate(GAME, env_cfg, Noop(), episodes, envs, seed=SEED)
    expected, s = [], rr.eval_start_seed(SEED)
    for _ in range(episodes // envs):
        expected += [noop_game(env_cfg, s + k) for k in range(envs)]
        s = rr.next_eval_seed(s, envs)
    np.testing.assert_array_equal(scores, expected)
    twice = evaluate(GAME, env_cfg, Noop(), episodes, envs, seed=rr.eval_start_seed(SEED))
    assert not np.array_equal(twice, scores)  # the rule applied twice gives other games


def test_trainer_evaluates_with_the_run_seed(run_dir):
    """The final evaluation replayed from the checkpoint taken right before it (weights, RNG state):
    `evaluate(seed=run seed)` gives the trainer's scores; the already transformed seed does not."""
    final = json.loads((run_dir / rr.FINAL_SCORES).read_text())
    ckpt = load_checkpoint(list_checkpoints(run_dir)[-1])
    config = Config.from_json(ckpt["config"])
    assert json.loads(ckpt["state"])["phase"] == "final"
    agent = Agent(config, num_actions(GAME))
    agent.load_state_dict(ckpt["agent"])
    threads = torch.get_num_threads()
    torch.set_num_threads(config.runtime.threads)  # the trainer's numerics
    try:
        replays = {}
        for name, seed in (("run seed", SEED), ("transformed", rr.eval_start_seed(SEED))):
            set_rng_state(ckpt["rng"])
            replays[name] = evaluate(GAME, config.env, agent.make_policy(config.runtime.eval_envs),
                                     config.schedule.final_eval_episodes, config.runtime.eval_envs, seed=seed)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(replays["run seed"], final["episodes"])
    assert not np.array_equal(replays["transformed"], final["episodes"])
