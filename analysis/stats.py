"""Aggregate statistics on (runs x games) arrays of human-normalised scores, after Agarwal et al. (2021).

Point estimates are rliable's own functions. Confidence intervals are rliable's 95 % percentile stratified
bootstrap, computed by the compiled kernels of `analysis.bootstrap`, which draw rliable's resampling indices
exactly. Each method has its own random stream, seeded by `stream_seed(name, seed)` (a hash of its name and
the seed), so its intervals do not depend on which other methods are compared or in what order, and they
equal rliable's: `np.random.seed(stream_seed(name, seed))` then `rliable.library.get_interval_estimates(
{name: hns}, ...)` (rliable resamples from the global RandomState and ignores its `random_state` argument).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from analysis import bootstrap

try:
    from rliable import metrics as rly_metrics
except TypeError as err:  # arch 7 under pandas 3: rliable 1.2 needs pandas<3 and arch<8
    raise ImportError(f"rliable cannot be imported on this stack ({err}); install 'pandas<3' and 'arch<8'") from err

METRICS: tuple[str, ...] = ("median", "iqm", "mean", "optimality_gap")
# Metrics that mean something for per-game means (1 run per game); IQM and the optimality gap are run-level.
PER_GAME_MEAN_METRICS: tuple[str, ...] = ("median", "mean")
DEFAULT_REPS = 50_000
DEFAULT_PROFILE_REPS = 2_000  # rliable's default for performance profiles
DEFAULT_SEED = 0
DEFAULT_TAU_MAX = 2.0  # rliable's Atari 100k profiles run over tau in [0, 2]
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% bootstrap confidence interval (lo = hi = None: no interval)."""

    point: float
    lo: float | None
    hi: float | None

    def as_dict(self) -> dict[str, float | None]:
        """JSON-friendly form."""
        return {"point": self.point, "lo": self.lo, "hi": self.hi}


def stream_seed(name: str, seed: int) -> int:
    """The RandomState seed of one method's (or one pair's) bootstrap: depends only on its name and `seed`."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def point_estimates(hns: np.ndarray) -> dict[str, float]:
    """Median, IQM, mean and optimality gap of a (runs x games) HNS matrix, with rliable's functions."""
    return {
        "median": float(rly_metrics.aggregate_median(hns)),
        "iqm": float(rly_metrics.aggregate_iqm(hns)),
        "mean": float(rly_metrics.aggregate_mean(hns)),
        "optimality_gap": float(rly_metrics.aggregate_optimality_gap(hns)),
    }


def games_above_human(hns: np.ndarray) -> int:
    """Number of games whose mean HNS over runs is at least 1 (human level)."""
    return int(np.sum(np.mean(hns, axis=0) >= 1.0))


def _percentile_ci(values: np.ndarray, size: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds along axis 0, with the percentiles arch's conf_int uses."""
    alpha = (1.0 - size) / 2
    lo, hi = np.percentile(values, [100 * alpha, 100 * (1.0 - alpha)], axis=0)
    return lo, hi


def _kernel_inputs(values: np.ndarray, steps: int, taus: np.ndarray) -> tuple[np.ndarray, ...]:
    """Histogram bins, sorted values and threshold ranks of each step's cells for `bootstrap.aggregate_kernel`."""
    runs, columns = values.shape
    per_step = values.reshape(runs, columns // steps, steps)  # (runs, tasks, steps)
    cells = runs * (columns // steps)
    bins = np.empty((runs, columns), dtype=np.int64)
    sorted_values = np.empty((steps, cells))
    thresholds = np.empty((steps, len(taus)), dtype=np.int64)
    for s in range(steps):
        step_values = per_step[:, :, s].ravel()
        order = np.argsort(step_values, kind="stable")
        rank = np.empty(cells, dtype=np.int64)
        rank[order] = np.arange(cells)
        bins[:, s::steps] = (s * cells + rank).reshape(runs, -1)
        sorted_values[s] = step_values[order]
        thresholds[s] = np.searchsorted(sorted_values[s], taus, side="right")
    return bins.ravel(), sorted_values, thresholds


def _resample(values: np.ndarray, steps: int, reps: int, seed: int, taus: np.ndarray, task_means: bool):
    key, words, pos = bootstrap.mt_state(seed)
    bins, sorted_values, thresholds = _kernel_inputs(values, steps, taus)
    return bootstrap.aggregate_kernel(key, words, pos, np.ascontiguousarray(values, dtype=float), steps, reps, bins,
                                      sorted_values, thresholds, task_means)


def aggregate_intervals(hns: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0) -> dict[str, Interval]:
    """Median, IQM, mean, optimality gap with 95% stratified bootstrap CIs from the RandomState `seed`.

    With one run per game (per-game means) there is nothing to resample: median and mean come without an
    interval, IQM and optimality gap are not given (they are run-level statistics).
    """
    points = point_estimates(hns)
    if hns.shape[0] < 2:
        return {m: Interval(points[m], None, None) for m in PER_GAME_MEAN_METRICS}
    task_means, trimmed, clipped, _ = _resample(hns, 1, reps, seed, np.empty(0), task_means=True)
    boot = np.stack([np.median(task_means, axis=1), trimmed[:, 0], task_means.mean(axis=1), 1.0 - clipped[:, 0]],
                    axis=1)
    lo, hi = _percentile_ci(boot)
    return {m: Interval(points[m], float(lo[i]), float(hi[i])) for i, m in enumerate(METRICS)}


def profile_taus(tau_max: float = DEFAULT_TAU_MAX, points: int = 81) -> np.ndarray:
    """Thresholds of a performance profile: `points` values evenly spaced over [0, tau_max]."""
    return np.linspace(0.0, tau_max, points)


def performance_profile(
    hns: np.ndarray, taus: np.ndarray, reps: int = DEFAULT_PROFILE_REPS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-score distribution: fraction of runs with HNS > tau, with pointwise 95% CI bands (point, lo, hi)."""
    taus = np.asarray(taus, dtype=float)
    point = np.array([np.mean(hns > t) for t in taus])
    if hns.shape[0] < 2:
        raise ValueError("a performance profile needs run-level scores (at least 2 runs per game)")
    _, _, _, above = _resample(hns, 1, reps, seed, taus, task_means=False)
    lo, hi = _percentile_ci(above[:, 0, :] / hns.size)
    return point, lo, hi


def iqm_curve(
    hns_curves: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM at each env step of a (runs x games x steps) tensor with 95% CIs (sample-efficiency curve)."""
    runs, games, steps = hns_curves.shape
    point = np.array([rly_metrics.aggregate_iqm(hns_curves[..., s]) for s in range(steps)])
    if runs < 2:
        return point, point.copy(), point.copy()
    _, trimmed, _, _ = _resample(hns_curves.reshape(runs, games * steps), steps, reps, seed, np.empty(0),
                                 task_means=False)
    lo, hi = _percentile_ci(trimmed)
    return point, lo, hi


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0) -> Interval:
    """P(X > Y) averaged over games (rliable's point estimate) with a 95% stratified independent bootstrap CI."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has {x.shape[1]} games but y has {y.shape[1]}")
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError("probability of improvement needs run-level scores (at least 2 runs per game)")
    point = float(rly_metrics.probability_of_improvement(x, y))
    y_order = np.argsort(y, axis=0, kind="stable").T  # (games, ny)
    y_sorted = np.take_along_axis(y, y_order.T, axis=0).T  # (games, ny)
    below = np.stack([np.searchsorted(y_sorted[g], x[:, g], side="left") for g in range(x.shape[1])])
    upto = np.stack([np.searchsorted(y_sorted[g], x[:, g], side="right") for g in range(x.shape[1])])
    key, words, pos = bootstrap.mt_state(seed)
    per_game = bootstrap.improvement_kernel(key, words, pos, x.shape[0], y.shape[0], reps,
                                            np.ascontiguousarray(y_order), below, upto)
    lo, hi = _percentile_ci(per_game.mean(axis=1))
    return Interval(point, float(lo), float(hi))
