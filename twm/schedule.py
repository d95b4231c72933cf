"""Update budget and the env-step/train-step interleaving (spec §10).

The budget counts time-step samples consumed by updates. The released code computed it inline,
where a missing pair of parentheses made the actor-critic pretraining budget 5e7*(1-0.6+0.3) =
3.5e7 instead of the intended 5e6; both are available (`schedule.ac_pretrain_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass

from twm.config import Config


@dataclass(frozen=True)
class Budget:
    obs_pretrain: float  # samples for observation-model pretraining (3e7)
    dyn_pretrain: float  # dynamics-model pretraining (1.5e7)
    ac_pretrain: float  # actor-critic pretraining (3.5e7 as released, 5e6 intended)
    samples_per_train_step: int  # N*l + M*H = 1,600 + 6,000
    train_steps: float  # main-loop train steps: (budget - pretrain_budget) / samples_per_train_step
    train_every: float  # env steps per train step: (capacity - prefill) / train_steps = 0.76


def compute_budget(config: Config) -> Budget:
    """The schedule's arithmetic in one place (spec §10.2-§10.3)."""
    s, wm, ac, buf = config.schedule, config.wm, config.ac, config.buffer
    if s.ac_pretrain_budget == "code":
        ac_fraction = 1 - s.pretrain_obs_fraction + s.pretrain_dyn_fraction  # as released
    else:
        ac_fraction = 1 - (s.pretrain_obs_fraction + s.pretrain_dyn_fraction)  # as intended
    per_step = wm.batch_size * wm.sequence_length * wm.train_steps + ac.batch_size * ac.horizon
    train_steps = (s.budget - s.pretrain_budget) / per_step
    return Budget(
        obs_pretrain=s.pretrain_budget * s.pretrain_obs_fraction,
        dyn_pretrain=s.pretrain_budget * s.pretrain_dyn_fraction,
        ac_pretrain=s.pretrain_budget * ac_fraction,
        samples_per_train_step=per_step,
        train_steps=train_steps,
        train_every=(buf.capacity - buf.prefill) / train_steps,
    )


class Interleave:
    """After each env step, how many train steps to run: the released code's float counter.

    The counter gains 1 per env step and loses `train_every` per train step while it is at least
    `train_every`, which gives 1 or 2 train steps per env step at paper settings (1.316 on average;
    124,999 in total because of float rounding, spec §10.3).
    """

    def __init__(self, train_every: float, counter: float = 0.0):
        self.train_every = train_every
        self.counter = counter

    def after_env_step(self) -> int:
        self.counter += 1.0
        steps = 0
        while self.counter >= self.train_every:
            self.counter -= self.train_every
            steps += 1
        return steps
