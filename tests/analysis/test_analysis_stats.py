"""Aggregates equal rliable's functions, CIs reproduce rliable's bootstrap exactly, and the paper's numbers come out."""

from __future__ import annotations

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics

from analysis import stats
from analysis.scores import REFERENCE_FILES, hns_matrix, load_score_file


def _rliable_aggregates(x: np.ndarray) -> np.ndarray:
    return np.array([metrics.aggregate_median(x), metrics.aggregate_iqm(x), metrics.aggregate_mean(x),
                     metrics.aggregate_optimality_gap(x)])


def test_twm_published_scores_give_paper_table1_mean_and_median(published):
    hns = hns_matrix(load_score_file(published / "TWM.json"))
    points = stats.point_estimates(hns)
    assert round(points["mean"], 3) == 0.956
    assert round(points["median"], 3) == 0.505
    assert stats.games_above_human(hns) == 8


def test_point_estimates_equal_rliable_for_every_published_file(published):
    files = [p for p in sorted(published.glob("*.json")) if p.stem not in REFERENCE_FILES]
    assert len(files) >= 8
    for path in files:
        hns = hns_matrix(load_score_file(path), where=path.name)
        ours = stats.point_estimates(hns)
        expected = _rliable_aggregates(hns)
        assert [ours[m] for m in stats.METRICS] == list(expected), path.name


def test_bootstrap_cis_equal_rliable_with_the_same_seed(published):
    for name in ("TWM.json", "SimPLe.json"):
        hns = hns_matrix(load_score_file(published / name))
        np.random.seed(11)  # rliable resamples from the global RandomState
        _, ci = rly.get_interval_estimates({"m": hns}, _rliable_aggregates, reps=500)
        ours = stats.aggregate_intervals(hns, reps=500, seed=11)
        np.testing.assert_allclose([ours[m].lo for m in stats.METRICS], ci["m"][0], rtol=1e-12)
        np.testing.assert_allclose([ours[m].hi for m in stats.METRICS], ci["m"][1], rtol=1e-12)


def test_cis_are_identical_across_two_runs_with_the_same_seed(published):
    hns = hns_matrix(load_score_file(published / "SPR.json"))
    first = stats.aggregate_intervals(hns, reps=2000, seed=3)
    second = stats.aggregate_intervals(hns, reps=2000, seed=3)
    assert first == second
    assert stats.aggregate_intervals(hns, reps=2000, seed=4) != first


def test_default_reps_is_50000():
    import inspect

    assert stats.DEFAULT_REPS == 50_000
    assert inspect.signature(stats.aggregate_intervals).parameters["reps"].default == 50_000


def test_performance_profile_equals_rliable(published):
    hns = hns_matrix(load_score_file(published / "TWM.json"))
    taus = np.linspace(0, 3, 13)
    np.random.seed(5)
    point, ci = rly.create_performance_profile({"m": hns}, taus, reps=300)
    ours = stats.performance_profile(hns, taus, reps=300, seed=5)
    np.testing.assert_allclose(ours[0], point["m"])
    np.testing.assert_allclose(ours[1], ci["m"][0])
    np.testing.assert_allclose(ours[2], ci["m"][1])


def test_probability_of_improvement_equals_rliable(published):
    x = hns_matrix(load_score_file(published / "TWM.json"))
    y = hns_matrix(load_score_file(published / "IRIS.json"))
    np.random.seed(7)
    point, ci = rly.get_interval_estimates(
        {"p": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=200)
    ours = stats.probability_of_improvement(x, y, reps=200, seed=7)
    assert ours.point == pytest.approx(point["p"][0], abs=1e-15)
    assert ours.lo == pytest.approx(ci["p"][0, 0], abs=1e-12)
    assert ours.hi == pytest.approx(ci["p"][1, 0], abs=1e-12)


def test_iqm_curve_equals_rliable():
    curves = np.random.default_rng(0).normal(size=(5, 26, 6))
    np.random.seed(9)
    point, ci = rly.get_interval_estimates(
        {"c": curves}, lambda s: np.array([metrics.aggregate_iqm(s[..., i]) for i in range(s.shape[-1])]), reps=300)
    ours = stats.iqm_curve(curves, reps=300, seed=9)
    np.testing.assert_allclose(ours[0], point["c"])
    np.testing.assert_allclose(ours[1], ci["c"][0], rtol=1e-12)
    np.testing.assert_allclose(ours[2], ci["c"][1], rtol=1e-12)


def test_one_run_methods_get_degenerate_intervals(published):
    hns = hns_matrix(load_score_file(published / "EfficientZero.json"))
    ivs = stats.aggregate_intervals(hns, reps=100)
    assert all(iv.lo == iv.point == iv.hi for iv in ivs.values())
