"""Aggregate statistics on (runs x games) arrays of human-normalised scores, after Agarwal et al. (2021).

Point estimates are rliable's own functions. Confidence intervals are rliable's percentile stratified
bootstrap, vectorised: the resampling indices are drawn exactly as rliable draws them
(`np.random.choice(num_runs, scores.shape)` per replication, from a `RandomState(seed)`), so with the same
seed the CIs equal `rliable.library.get_interval_estimates` after `np.random.seed(seed)` (rliable ignores its
`random_state` argument), only several times faster. Each call is seeded on its own, so a report is
reproducible and adding a method does not change another method's intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.stats

try:
    from rliable import metrics as rly_metrics
except TypeError as err:  # arch 7 under pandas 3: rliable 1.2 needs pandas<3 and arch<8
    raise ImportError(f"rliable cannot be imported on this stack ({err}); install 'pandas<3' and 'arch<8'") from err

METRICS: tuple[str, ...] = ("median", "iqm", "mean", "optimality_gap")
DEFAULT_REPS = 50_000
DEFAULT_PROFILE_REPS = 2_000  # rliable's default for performance profiles
DEFAULT_SEED = 0
CONFIDENCE = 0.95
_CHUNK_ELEMENTS = 2_000_000  # resampled values held in memory at once


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% bootstrap confidence interval."""

    point: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        """JSON-friendly form."""
        return {"point": self.point, "lo": self.lo, "hi": self.hi}


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


def _aggregates_batch(x: np.ndarray) -> np.ndarray:
    """(B, runs, games) -> (B, 4): median, IQM, mean, optimality gap of each resample (rliable's formulas)."""
    task_means = x.mean(axis=1)  # (B, G)
    flat = x.reshape(x.shape[0], -1)
    return np.stack(
        [
            np.median(task_means, axis=1),
            scipy.stats.trim_mean(flat, proportiontocut=0.25, axis=1),
            task_means.mean(axis=1),
            1.0 - np.minimum(flat, 1.0).mean(axis=1),
        ],
        axis=1,
    )


def _stratified_bootstrap(
    scores: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], reps: int, seed: int
) -> np.ndarray:
    """(reps, k) statistics of resamples that redraw runs within each game (rliable's StratifiedBootstrap)."""
    rng = np.random.RandomState(seed)
    n = scores.shape[0]
    strata = np.ogrid[tuple(slice(s) for s in scores.shape[1:])]
    chunk = max(1, _CHUNK_ELEMENTS // scores.size)
    out = []
    for start in range(0, reps, chunk):
        b = min(chunk, reps - start)
        idx = rng.choice(n, (b, *scores.shape), replace=True)
        out.append(statistic(scores[(idx, *strata)]))
    return np.concatenate(out, axis=0)


def _percentile_ci(values: np.ndarray, size: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    alpha = 100 * (1 - size) / 2
    lo, hi = np.percentile(values, [alpha, 100 - alpha], axis=0)
    return lo, hi


def aggregate_intervals(
    hns: np.ndarray, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
) -> dict[str, Interval]:
    """Median, IQM, mean, optimality gap with 95% stratified bootstrap CIs (degenerate for 1-run methods)."""
    points = point_estimates(hns)
    if hns.shape[0] < 2:
        return {m: Interval(points[m], points[m], points[m]) for m in METRICS}
    lo, hi = _percentile_ci(_stratified_bootstrap(hns, _aggregates_batch, reps, seed))
    return {m: Interval(points[m], float(lo[i]), float(hi[i])) for i, m in enumerate(METRICS)}


def performance_profile(
    hns: np.ndarray, taus: np.ndarray, reps: int = DEFAULT_PROFILE_REPS, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-score distribution: fraction of runs with HNS > tau, with pointwise 95% CI bands (point, lo, hi)."""
    taus = np.asarray(taus, dtype=float)
    point = np.array([np.mean(hns > t) for t in taus])
    if hns.shape[0] < 2:
        return point, point.copy(), point.copy()

    def fractions(x: np.ndarray) -> np.ndarray:  # (B, R, G) -> (B, taus)
        flat = x.reshape(x.shape[0], -1)
        return np.stack([np.mean(flat > t, axis=1) for t in taus], axis=1)

    lo, hi = _percentile_ci(_stratified_bootstrap(hns, fractions, reps, seed))
    return point, lo, hi


def iqm_curve(
    hns_curves: np.ndarray, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM at each env step of a (runs x games x steps) tensor with 95% CIs (sample-efficiency curve)."""
    point = np.array([rly_metrics.aggregate_iqm(hns_curves[..., s]) for s in range(hns_curves.shape[2])])
    if hns_curves.shape[0] < 2:
        return point, point.copy(), point.copy()

    def iqms(x: np.ndarray) -> np.ndarray:  # (B, R, G, S) -> (B, S)
        b, r, g, s = x.shape
        flat = np.moveaxis(x, 3, 1).reshape(b, s, r * g)
        return scipy.stats.trim_mean(flat, proportiontocut=0.25, axis=2)

    lo, hi = _percentile_ci(_stratified_bootstrap(hns_curves, iqms, reps, seed))
    return point, lo, hi


def _comparison_matrices(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(games, runs_x, runs_y): 1 where x > y, 0.5 on ties, 0 otherwise (Mann-Whitney U kernel)."""
    xt, yt = x.T[:, :, None], y.T[:, None, :]
    return (xt > yt) + 0.5 * (xt == yt)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, runs, games) resample indices -> (B, games, n) how often each run was drawn."""
    onehot = idx[..., None] == np.arange(n)  # (B, R, G, n)
    return onehot.sum(axis=1, dtype=float)


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
) -> Interval:
    """P(X > Y) averaged over games (rliable's point estimate) with a 95% stratified independent bootstrap CI."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has {x.shape[1]} games but y has {y.shape[1]}")
    point = float(rly_metrics.probability_of_improvement(x, y))
    if min(x.shape[0], y.shape[0]) < 2:
        return Interval(point, point, point)
    rng = np.random.RandomState(seed)
    kernel = _comparison_matrices(x, y)  # (G, nx, ny)
    nx, ny = x.shape[0], y.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // (x.size * max(nx, ny)))
    values = []
    for start in range(0, reps, chunk):
        b = min(chunk, reps - start)
        xi = np.empty((b, *x.shape), dtype=np.int64)
        yi = np.empty((b, *y.shape), dtype=np.int64)
        for r in range(b):  # rliable draws x's then y's indices in every replication
            xi[r] = rng.choice(nx, x.shape, replace=True)
            yi[r] = rng.choice(ny, y.shape, replace=True)
        wx, wy = _counts(xi, nx), _counts(yi, ny)
        per_game = np.einsum("bgi,gij,bgj->bg", wx, kernel, wy) / (nx * ny)
        values.append(per_game.mean(axis=1))
    lo, hi = _percentile_ci(np.concatenate(values)[:, None])
    return Interval(point, float(lo[0]), float(hi[0]))
