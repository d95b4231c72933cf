"""Our compiled bootstrap draws rliable's indices, and its intervals equal real rliable's on every shipped file."""

from __future__ import annotations

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics

from analysis import baselines, bootstrap, stats
from analysis.scores import hns_matrix

RUN_LEVEL = [n for n in baselines.names() if n not in ("EfficientZero", "MuZero")]


def _rliable_aggregates(x: np.ndarray) -> np.ndarray:
    return np.array([metrics.aggregate_median(x), metrics.aggregate_iqm(x), metrics.aggregate_mean(x),
                     metrics.aggregate_optimality_gap(x)])


def _ledger(name: str) -> np.ndarray:
    return hns_matrix(baselines.load(name), where=name)


@pytest.mark.parametrize("runs", [2, 4, 5, 7, 32, 52, 100])
def test_kernel_draws_the_indices_of_legacy_randomstate_choice(runs):
    key, words, pos = bootstrap.mt_state(123)
    ours = bootstrap.draw_indices(key, words, pos, runs, 20_000)  # crosses many 624-word state refills
    np.testing.assert_array_equal(ours, np.random.RandomState(123).choice(runs, 20_000, replace=True))


@pytest.mark.parametrize("name", RUN_LEVEL)
def test_cis_equal_rliable_on_every_ledger_file(name):
    hns = _ledger(name)
    seed = stats.stream_seed(name, 0)
    np.random.seed(seed)  # rliable resamples from the global RandomState
    point, ci = rly.get_interval_estimates({name: hns}, _rliable_aggregates, reps=200)
    ours = stats.aggregate_intervals(hns, reps=200, seed=seed)
    assert [ours[m].point for m in stats.METRICS] == list(point[name])
    # median and mean are summed in rliable's order (exactly equal); IQM and the gap to within rounding
    for i, m in enumerate(stats.METRICS):
        exact = m in ("median", "mean")
        np.testing.assert_allclose([ours[m].lo, ours[m].hi], ci[name][:, i], rtol=0, atol=0 if exact else 1e-15)


@pytest.mark.parametrize(("x", "y"), [("TWM", "IRIS"), ("SPR", "STORM"), ("BBF", "DrQ_eps")])
def test_probability_of_improvement_equals_rliable(x, y):
    a, b = _ledger(x), _ledger(y)
    np.random.seed(7)
    point, ci = rly.get_interval_estimates(
        {"p": [a, b]}, lambda u, v: np.array([metrics.probability_of_improvement(u, v)]), reps=40)
    ours = stats.probability_of_improvement(a, b, reps=40, seed=7)
    assert (ours.point, ours.lo, ours.hi) == (point["p"][0], ci["p"][0, 0], ci["p"][1, 0])


def test_performance_profile_equals_rliable():
    hns = _ledger("TWM")
    taus = stats.profile_taus(2.0, 21)
    np.random.seed(5)
    point, ci = rly.create_performance_profile({"m": hns}, taus, reps=300)
    ours = stats.performance_profile(hns, taus, reps=300, seed=5)
    np.testing.assert_array_equal(ours[0], point["m"])
    np.testing.assert_array_equal(ours[1], ci["m"][0])
    np.testing.assert_array_equal(ours[2], ci["m"][1])


def test_iqm_curve_equals_rliable():
    curves = np.random.default_rng(0).normal(size=(5, 26, 6))
    np.random.seed(9)
    point, ci = rly.get_interval_estimates(
        {"c": curves}, lambda s: np.array([metrics.aggregate_iqm(s[..., i]) for i in range(s.shape[-1])]), reps=300)
    ours = stats.iqm_curve(curves, reps=300, seed=9)
    np.testing.assert_array_equal(ours[0], point["c"])
    np.testing.assert_allclose(ours[1], ci["c"][0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ours[2], ci["c"][1], rtol=0, atol=1e-15)


def test_cis_are_identical_across_two_runs_with_the_same_seed():
    hns = _ledger("SPR")
    first = stats.aggregate_intervals(hns, reps=2000, seed=3)
    assert stats.aggregate_intervals(hns, reps=2000, seed=3) == first
    assert stats.aggregate_intervals(hns, reps=2000, seed=4) != first


def test_a_methods_stream_depends_only_on_its_name_and_the_seed():
    assert stats.stream_seed("TWM", 0) == stats.stream_seed("TWM", 0)
    assert len({stats.stream_seed(n, s) for n in ("TWM", "IRIS", "ours") for s in (0, 1)}) == 6


def test_one_run_methods_get_no_intervals_and_no_run_level_metrics():
    ivs = stats.aggregate_intervals(_ledger("EfficientZero"), reps=100)
    assert set(ivs) == {"median", "mean"}
    assert all(iv.lo is None and iv.hi is None for iv in ivs.values())
    with pytest.raises(ValueError, match="run-level"):
        stats.probability_of_improvement(_ledger("MuZero"), _ledger("TWM"), reps=10)
