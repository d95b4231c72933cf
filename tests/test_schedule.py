"""Budget arithmetic and env-step/train-step interleaving (spec §10)."""

from collections import Counter

import pytest

from twm.config import paper
from twm.schedule import Interleave, compute_budget


def simulate(config):
    budget = compute_budget(config)
    interleave = Interleave(budget.train_every)
    phases = Counter(interleave.after_env_step() for _ in range(config.buffer.capacity - config.buffer.prefill))
    return budget, phases


def test_paper_budget_matches_the_released_code():
    budget, phases = simulate(paper())
    assert budget.obs_pretrain == 3e7 and budget.dyn_pretrain == 1.5e7
    assert budget.ac_pretrain == pytest.approx(3.5e7)  # 5e7 * (1 - 0.6 + 0.3): the precedence bug
    assert budget.samples_per_train_step == 7_600
    assert budget.train_steps == 125_000 and budget.train_every == pytest.approx(0.76)
    # float arithmetic gives 124,999 train steps: 65,001 phases with 1 and 29,999 with 2
    assert phases == Counter({1: 65_001, 2: 29_999})


def test_intended_actor_critic_pretraining_budget_is_a_switch():
    budget = compute_budget(paper().with_overrides({"schedule.ac_pretrain_budget": "intended"}))
    assert budget.ac_pretrain == pytest.approx(5e6)


@pytest.mark.parametrize("capacity,train_every", [(10_000, 0.04), (25_000, 0.16), (50_000, 0.36)])
def test_fewer_interactions_keep_the_full_update_budget(capacity, train_every):
    config = paper().with_overrides({"buffer.capacity": capacity})
    budget, phases = simulate(config)
    assert budget.train_every == pytest.approx(train_every)
    total = sum(k * n for k, n in phases.items())
    assert abs(total - 125_000) <= 1


def test_history_length_four_changes_samples_per_step():
    config = paper().with_overrides({"wm.sequence_length": 4, "dyn.memory_length": 4})
    budget = compute_budget(config)
    assert budget.samples_per_train_step == 6_400
    assert int(budget.train_steps) == 148_437
