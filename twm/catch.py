"""Catch: a tiny pixel task with Atari's observation/reward/lives contract, for quick learning checks.

A ball falls from the top in one of 4 columns, one row per step; a paddle at the bottom moves left,
stays or moves right. When the ball reaches the bottom the step's reward is +1 if the paddle is under
it, else -1, and the next ball appears at the top. A game is 10 balls; `lives` counts the balls still to
play, so every ball end is a "life loss" and the last one is the game over, exactly as in the Atari
protocol of spec §2.2 (make_env wraps it in the same EpisodicLives/FrameStack/TimeLimit stack).
Deterministic given the reset seed (ball columns come from `np_random`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

# Coarse on purpose: big objects give a tiny observation model a strong pixel signal.
COLUMNS = 4  # paddle/ball positions
CELL_W = 16  # pixels per column: 4 * 16 = 64
ROW_H = 9  # pixels per ball row
FALL_STEPS = 6  # steps from appearing (row 0) to landing (row 6, right above the paddle)
PADDLE_Y = 56  # paddle occupies y 56..63
BALLS = 10  # balls per game (= initial lives)
SIZE = 64
BALL_VALUE, PADDLE_VALUE = 255, 255  # full contrast: the decoder loss weighs both alike
ACTIONS = ("NOOP", "LEFT", "RIGHT")
_MOVE = (0, -1, 1)
# Any policy blind to the ball catches with probability 1/COLUMNS (the column is uniform and independent
# of the paddle), so the uniform random policy's expected game score is 10 * (2/4 - 1) = -5;
# a perfect policy scores +10 (3 moves reach any column within the 6-step fall, even after a training
# pseudo-reset's NOOP).
RANDOM_POLICY_RETURN = BALLS * (2 / COLUMNS - 1)
MAX_RETURN = float(BALLS)


class CatchEnv(gym.Env):
    """One game of Catch; observations are (64, 64) uint8 frames, rewards in {-1, 0, +1}."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE), np.uint8)
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self.lives = BALLS
        self.paddle = COLUMNS // 2
        self.ball_col = 0
        self.ball_row = 0

    def get_action_meanings(self) -> list[str]:
        return list(ACTIONS)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.lives = BALLS
        self.paddle = COLUMNS // 2
        self._new_ball()
        return self._frame(), {"lives": self.lives}

    def step(self, action: int):
        if self.lives == 0:  # game over: frozen, like a finished ALE game
            return self._frame(), 0.0, True, False, {"lives": 0}
        self.paddle = int(np.clip(self.paddle + _MOVE[int(action)], 0, COLUMNS - 1))
        self.ball_row += 1
        reward = 0.0
        if self.ball_row == FALL_STEPS:
            reward = 1.0 if self.paddle == self.ball_col else -1.0
            self.lives -= 1
            if self.lives > 0:
                self._new_ball()
        return self._frame(), reward, self.lives == 0, False, {"lives": self.lives}

    def _new_ball(self) -> None:
        self.ball_col = int(self.np_random.integers(COLUMNS))
        self.ball_row = 0

    def _frame(self) -> np.ndarray:
        frame = np.zeros((SIZE, SIZE), np.uint8)  # (64, 64)
        if self.ball_row < FALL_STEPS:
            y, x = self.ball_row * ROW_H, self.ball_col * CELL_W
            frame[y : y + ROW_H, x + 1 : x + CELL_W - 1] = BALL_VALUE  # (9, 14) block
        x = self.paddle * CELL_W
        frame[PADDLE_Y:, x : x + CELL_W] = PADDLE_VALUE
        return frame

