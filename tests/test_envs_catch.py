"""Catch, the toy pixel task: Atari's observation/reward/lives contract, a perfect score for a
pixel-reading scripted policy and a clearly lower one for the random policy."""

import numpy as np

from twm.catch import (
    BALL_VALUE,
    CELL_W,
    MAX_RETURN,
    PADDLE_VALUE,
    PADDLE_Y,
    RANDOM_POLICY_RETURN,
    ROW_H,
    SIZE,
)
from twm.config import EnvConfig
from twm.envs import RandomPolicy, evaluate, make_env, num_actions

CFG = EnvConfig()


class PixelCatcher:
    """Moves the paddle under the ball, both read from the newest frame of the stack."""

    def act(self, obs):
        frames = obs[:, -1].astype(int)  # (B, 64, 64)
        ball_x = np.argmax(frames[:, :PADDLE_Y].max(axis=1), axis=1)  # leftmost ball pixel
        paddle_x = np.argmax(frames[:, PADDLE_Y:].max(axis=1), axis=1)
        return np.select([ball_x < paddle_x, ball_x > paddle_x + 7], [1, 2], 0)

    def observe(self, rewards, dones):
        pass

    def reset(self, i):
        pass


def test_catch_has_the_atari_contract():
    assert num_actions("Catch") == 3
    env = make_env("Catch", CFG)
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 64, 64) and obs.dtype == np.uint8 and info["lives"] == 10
    assert obs[-1][:PADDLE_Y].max() == BALL_VALUE and obs[-1][PADDLE_Y:].max() == PADDLE_VALUE  # a ball and a paddle
    assert (obs[-1] > 0).sum() == ROW_H * (CELL_W - 2) + CELL_W * (SIZE - PADDLE_Y)  # ball block + paddle
    rewards, life_losses = [], 0
    while True:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        assert obs.shape == (4, 64, 64) and not truncated
        if terminated and info["lives"] == 0:
            break
        if terminated:  # each ball is a learning episode; the game goes on after the pseudo-reset
            life_losses += 1
            obs, info = env.reset(seed=123)
            assert info["lives"] == 10 - life_losses
    assert life_losses == 9
    assert set(rewards) <= {-1.0, 0.0, 1.0} and np.count_nonzero(rewards) == 10


def test_catch_is_deterministic_given_the_seed():
    def frames(seed):
        env = make_env("Catch", CFG, evaluation=True)
        obs = [env.reset(seed=seed)[0]]
        obs += [env.step(0)[0] for _ in range(40)]
        return np.stack(obs)

    np.testing.assert_array_equal(frames(3), frames(3))
    assert not np.array_equal(frames(3), frames(4))


def test_scripted_catcher_is_perfect_and_random_is_far_worse():
    perfect = evaluate("Catch", CFG, PixelCatcher(), num_episodes=8, num_envs=4, seed=0)
    np.testing.assert_array_equal(perfect, MAX_RETURN)
    random = evaluate("Catch", CFG, RandomPolicy(3, seed=0), num_episodes=200, num_envs=50, seed=0)
    assert abs(random.mean() - RANDOM_POLICY_RETURN) < 0.6  # std of the mean ~ 0.15


class Noop(PixelCatcher):
    def act(self, obs):
        return np.zeros(len(obs), dtype=np.int64)


def test_any_ball_blind_policy_scores_the_random_baseline():
    """RANDOM_POLICY_RETURN holds for every policy blind to the ball (the column is uniform and independent of
    the paddle): a paddle that never moves catches a quarter of the balls too."""
    scores = evaluate("Catch", CFG, Noop(), num_episodes=200, num_envs=50, seed=1)
    assert abs(scores.mean() - RANDOM_POLICY_RETURN) < 0.6  # std of the mean ~ 0.2


def test_scripted_catcher_is_perfect_in_training_episodes_too():
    env = make_env("Catch", CFG)
    obs, _ = env.reset(seed=5)
    total, catcher = 0.0, PixelCatcher()
    for _ in range(200):
        obs, reward, terminated, _, info = env.step(int(catcher.act(obs[None])[0]))
        total += reward
        if terminated and info["lives"] == 0:
            break
        if terminated:
            obs, _ = env.reset(seed=0)  # the pseudo-reset's NOOP still leaves time to reach any column
    assert total == MAX_RETURN
