"""The Atari protocol of spec §2 on real ALE games: wrapper stack, life loss, FIRE, no-ops, time limit."""

from dataclasses import replace

import numpy as np
import pytest
from gymnasium.wrappers import TimeLimit

from twm.config import EnvConfig
from twm.envs import EpisodicLives, FireAfterLifeLoss, NoopStart, make_env, num_actions
from twm.games import GAMES

# Spec §2.6, restated here so the test does not trust twm.games.
SPEC_ACTIONS = dict.fromkeys(
    ["Alien", "BankHeist", "BattleZone", "Boxing", "ChopperCommand", "Frostbite", "Hero", "Jamesbond",
     "Kangaroo", "Krull", "PrivateEye", "RoadRunner", "Seaquest"], 18,
) | {"Amidar": 10, "Assault": 7, "Asterix": 9, "Breakout": 4, "CrazyClimber": 9, "DemonAttack": 6, "Freeway": 3,
     "Gopher": 8, "KungFuMaster": 14, "MsPacman": 9, "Pong": 6, "Qbert": 6, "UpNDown": 6}
NON_FIRE = {"Asterix", "CrazyClimber", "Freeway", "KungFuMaster", "MsPacman"}
CFG = EnvConfig()


def wrappers(env):
    """The wrapper types from outermost to innermost."""
    types = []
    while hasattr(env, "env"):
        types.append(type(env))
        env = env.env
    return types


def play_until_life_loss(env, action, max_steps=3000):
    """Step with a fixed action until a life-loss termination; returns the steps' (info, terminated) list."""
    history = []
    for _ in range(max_steps):
        _, _, terminated, truncated, info = env.step(action)
        history.append((info, terminated))
        assert not truncated
        if terminated:
            return history
    raise AssertionError("no life lost")


def test_all_26_games_construct_with_the_spec_action_sets():
    assert set(SPEC_ACTIONS) == set(GAMES)
    for game, n in SPEC_ACTIONS.items():
        assert num_actions(game) == n
        for evaluation in (False, True):
            env = make_env(game, CFG, evaluation=evaluation)
            obs, info = env.reset()  # unseeded: a seeded reset reloads the ROM (slow)
            assert env.action_space.n == n, game
            assert (env.unwrapped.get_action_meanings()[1] == "FIRE") == (game not in NON_FIRE), game
            stack = wrappers(env)
            assert stack[0] is TimeLimit and EpisodicLives in stack
            assert (FireAfterLifeLoss in stack) == (game not in NON_FIRE), game
            assert (NoopStart in stack) == (game not in NON_FIRE and not evaluation), game
            assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
            assert obs.shape == (4, 64, 64) and obs.dtype == np.uint8
            obs, reward, *_, info = env.step(env.action_space.n - 1)
            assert obs.shape == (4, 64, 64) and obs.dtype == np.uint8 and "lives" in info
            env.close()


def test_life_loss_terminates_the_learning_episode_but_not_the_game():
    env = make_env("Breakout", CFG)
    _, info = env.reset(seed=1)
    lives = info["lives"]
    history = play_until_life_loss(env, 0)  # NOOP: the ball launched by the reset FIRE is missed
    lost_info, _ = history[-1]
    assert lost_info["lives"] == lives - 1
    # A pseudo-reset ignores the seed and takes exactly one NOOP step (4 frames) in the same game.
    obs, info = env.reset(seed=12345)
    assert info["lives"] == lives - 1
    assert info["episode_frame_number"] == lost_info["episode_frame_number"] + 4
    assert all((frame == obs[-1]).all() for frame in obs)  # the stack is refilled with the new frame
    # After the real game over, reset(seed) is a full seeded reset.
    while True:
        _, _, terminated, _, info = env.step(0)
        if terminated and info["lives"] == 0:
            break
        if terminated:
            env.reset(seed=777)
    obs, info = env.reset(seed=1)
    assert info["lives"] == lives and info["episode_frame_number"] < lost_info["episode_frame_number"]
    np.testing.assert_array_equal(obs, make_env("Breakout", CFG).reset(seed=1)[0])


def test_forced_reset_restarts_the_game_after_a_life_loss():
    env = make_env("Breakout", CFG, evaluation=True)
    env.reset(seed=1)
    first = env.reset(seed=1, options={"force": True})
    play_until_life_loss(env, 0)
    again = env.reset(seed=1, options={"force": True})
    assert again[1]["lives"] == 5
    assert again[1]["episode_frame_number"] == first[1]["episode_frame_number"]
    assert (again[0] == first[0]).all()


def test_fire_games_press_fire_after_a_life_loss():
    # The life-losing step takes the action's 4 frames plus the automatic FIRE's 4 frames.
    env = make_env("Breakout", CFG)
    env.reset(seed=1)
    history = play_until_life_loss(env, 0)
    frames = [info["episode_frame_number"] for info, _ in history]
    assert all(b - a == 4 for a, b in zip(frames[:-2], frames[1:-1], strict=True))
    assert frames[-1] - frames[-2] == 8
    # MsPacman is not a FIRE game: its life-losing step is an ordinary 4-frame step.
    env = make_env("MsPacman", CFG)
    env.reset(seed=1)
    history = play_until_life_loss(env, 0)
    frames = [info["episode_frame_number"] for info, _ in history]
    assert frames[-1] - frames[-2] == 4


def test_noop_starts_only_in_training():
    def after_reset(game, evaluation):
        """(frames played by reset, lives) for seeds 0..5."""
        env = make_env(game, CFG, evaluation=evaluation)
        played = []
        for seed in range(6):
            _, info = env.reset(seed=seed)
            played.append((env.unwrapped.ale.getEpisodeFrameNumber(), info["lives"]))
        return played

    # AtariPreprocessing's no-ops (non-FIRE games) are raw 1-frame steps; NoopStart's (FIRE games,
    # after FIRE and action 2) are 4-frame agent steps, as in the released code. A life lost during
    # the no-ops adds an automatic 4-frame FIRE step.
    for game, frames_per_noop in (("MsPacman", 1), ("Breakout", 4)):
        train, evaluation = after_reset(game, False), after_reset(game, True)
        assert len(set(evaluation)) == 1  # no random no-ops at evaluation
        start, lives = evaluation[0]
        noops = [(frames - start - 4 * (lives - left)) / frames_per_noop for frames, left in train]
        assert all(n == int(n) and 1 <= n <= 30 for n in noops), noops
        assert len(set(noops)) > 1


def test_time_limit_is_outermost_and_restarts_on_every_reset():
    # Breakout with NOOPs loses a life every 23 agent steps: a 30-step limit that restarts on each
    # pseudo-reset never truncates; one that counted across lives would.
    env = make_env("Breakout", replace(CFG, time_limit=30))
    assert isinstance(env, TimeLimit)
    env.reset(seed=1)
    life_losses = 0
    while True:
        _, _, terminated, truncated, info = env.step(0)
        assert not truncated
        if terminated and info["lives"] == 0:
            break
        if terminated:
            life_losses += 1
            env.reset(seed=0)
    assert life_losses == 4
    # A truncation after exactly 10 steps; the following reset continues the game (spec §2.2 quirk)
    # and the next truncation again comes after exactly 10 steps.
    env = make_env("MsPacman", replace(CFG, time_limit=10))
    env.reset(seed=1)
    for _ in range(2):
        for step in range(1, 11):
            _, _, terminated, truncated, info = env.step(0)
            assert not terminated and truncated == (step == 10)
        _, reset_info = env.reset(seed=99)
        assert reset_info["episode_frame_number"] == info["episode_frame_number"] + 4
        assert reset_info["lives"] == info["lives"]


def test_sticky_action_probability_reaches_ale():
    env = make_env("Pong", replace(CFG, sticky_action_prob=0.25))
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
