"""Evaluation protocol of spec §2.3: whole games, lock-step rounds, the seed rule, determinism."""

from dataclasses import replace

import numpy as np
import pytest

from twm.config import EnvConfig
from twm.envs import RandomPolicy, eval_round_seeds, evaluate, make_env

CFG = EnvConfig()


class RecordingPolicy(RandomPolicy):
    """Seeded random actions; records what evaluate shows it."""

    def __init__(self, num_actions, seed=0):
        super().__init__(num_actions, seed)
        self.first_obs = []  # the observation each env starts a game with, in order of resets
        self.pending = []
        self.rewards, self.dones = [], []
        self.round_starts = []  # step index at which each round's games start

    def act(self, obs):
        for i in self.pending:
            self.first_obs.append(obs[i].copy())
        self.pending = []
        return super().act(obs)

    def observe(self, rewards, dones):
        self.rewards.append(rewards.copy())
        self.dones.append(dones.copy())

    def reset(self, i):
        if i == 0:
            self.round_starts.append(len(self.dones))
        self.pending.append(i)


def test_an_evaluation_episode_is_a_whole_breakout_game():
    policy = RecordingPolicy(4, seed=0)
    scores = evaluate("Breakout", CFG, policy, num_episodes=1, num_envs=1, seed=0)
    dones = np.concatenate(policy.dones)
    rewards = np.concatenate(policy.rewards)
    assert dones.sum() == 5  # 4 life losses and the game over, none of them resetting the game
    assert dones[-1] and len(dones) > 5
    assert scores.dtype == np.float64 and scores.shape == (1,)
    assert np.all(np.abs(rewards) < 1)  # the policy sees tanh rewards; the score is raw
    assert scores[0] == pytest.approx(np.arctanh(rewards).sum(), abs=1e-6)
    assert len(policy.first_obs) == 1


def test_the_evaluation_time_limit_spans_the_whole_game():
    policy = RecordingPolicy(4, seed=0)
    evaluate("Breakout", replace(CFG, time_limit=60), policy, num_episodes=1, num_envs=1, seed=0)
    dones = np.concatenate(policy.dones)
    assert len(dones) == 60 and dones[-1]  # truncated after 60 steps although lives were lost on the way
    assert dones[:-1].any()


def test_evaluate_is_deterministic_and_resets_only_when_all_games_ended():
    policies = [RecordingPolicy(4, seed=7) for _ in range(2)]
    runs = [evaluate("Breakout", CFG, p, num_episodes=3, num_envs=2, seed=5) for p in policies]
    assert runs[0].shape == (3,)
    np.testing.assert_array_equal(runs[0], runs[1])
    # 2 rounds of 2 lock-stepped games: each game ends at its 5th done (lives 5 -> 0); after that the
    # env idles (reward 0, done True) until the other game ends too; only then both are reset.
    policy = policies[0]
    dones, rewards = np.stack(policy.dones), np.stack(policy.rewards)  # (steps, 2)
    bounds = [*policy.round_starts, len(dones)]
    scores, idled = [], False
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        for k in range(2):
            d, r = dones[start:end, k], rewards[start:end, k]
            end_step = np.flatnonzero(d)[4]
            assert d[end_step:].all() and not r[end_step + 1 :].any()
            idled |= end_step < end - start - 1
            scores.append(np.arctanh(r).sum())
    assert idled
    np.testing.assert_allclose(runs[0], scores[:3], atol=1e-6)


def test_eval_round_seeds_follow_the_spec_rule():
    s = (4 + 13) * 7919 + 13
    assert eval_round_seeds(4, 3, 3) == [
        [s, s + 1, s + 2],
        [3 * s + 16, 3 * s + 17, 3 * s + 18],
        [3 * (3 * s + 16) + 16, 3 * (3 * s + 16) + 17, 3 * (3 * s + 16) + 18],
    ]


def test_rounds_reset_all_envs_with_the_round_seeds_and_keep_the_first_scores():
    # Catch's first frame shows where the seeded first ball falls, so the reset seeds are observable.
    policy = RecordingPolicy(3, seed=1)
    scores = evaluate("Catch", CFG, policy, num_episodes=5, num_envs=2, seed=9)
    assert scores.shape == (5,)
    seeds = [s for round_seeds in eval_round_seeds(9, 2, 3) for s in round_seeds]
    expected = [make_env("Catch", CFG, evaluation=True).reset(seed=s)[0] for s in seeds]
    assert len(policy.first_obs) == 6  # 3 rounds of 2 games; the 6th score is dropped
    for got, want in zip(policy.first_obs, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_num_envs_is_capped_by_num_episodes_and_bad_counts_are_rejected():
    policy = RecordingPolicy(3)
    assert evaluate("Catch", CFG, policy, num_episodes=2, num_envs=8, seed=0).shape == (2,)
    assert all(len(r) == 2 for r in policy.rewards)
    with pytest.raises(ValueError, match="num_episodes"):
        evaluate("Catch", CFG, policy, num_episodes=0, num_envs=1, seed=0)


def test_one_env_pool_serves_every_round_of_an_evaluation(monkeypatch):
    import twm.envs

    made = []

    def counting_make_env(*args, **kwargs):
        made.append(args[0])
        return make_env(*args, **kwargs)

    monkeypatch.setattr(twm.envs, "make_env", counting_make_env)
    scores = twm.envs.evaluate("Catch", CFG, RandomPolicy(3, seed=0), num_episodes=7, num_envs=2, seed=1)
    assert len(scores) == 7 and made == ["Catch", "Catch"]  # 4 rounds of 2 games, 2 envs made once
