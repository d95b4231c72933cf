"""Compiled stratified-bootstrap kernels that draw exactly rliable 1.2's resampling indices.

rliable resamples a (runs x tasks) array with `np.random.choice(runs, (runs, tasks))` from the global
legacy `RandomState` once per replication. That is MT19937 (Matsumoto & Nishimura, 1998): each draw takes one
32-bit output, keeps its lowest bits (the smallest mask 2^k - 1 >= runs - 1) and draws again while the result
is >= runs. These kernels run that generator themselves from a `RandomState`'s state and accumulate each
replication's statistics while drawing, so the resample is never materialised: the same indices as rliable,
in the same order, at a few nanoseconds per draw. Statistics (rliable's formulas) per replication:

- `aggregate_kernel`: the mean over runs of every task (for median and mean), the 25 % trimmed mean of all
  values (IQM, by a histogram over the ranks of the original values), the mean of min(x, 1) (optimality gap)
  and, for performance profiles, how many values exceed each threshold. A (runs x tasks x steps) tensor is
  resampled as rliable does (an index per run, task and step) with these statistics per step.
- `improvement_kernel`: P(X > Y) per task for two independently resampled arrays (x's indices, then y's, in
  each replication), from the draw counts and the Mann-Whitney kernel (1 for x > y, 1/2 for ties).
"""

from __future__ import annotations

import numba
import numpy as np

_N, _M = 624, 397  # MT19937 state size and shift
_UPPER, _LOWER, _MATRIX_A = 0x80000000, 0x7FFFFFFF, 0x9908B0DF


def mt_state(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The MT19937 key (624 words), its tempered outputs and the position of `np.random.RandomState(seed)`."""
    _, key, pos, _, _ = np.random.RandomState(seed).get_state()
    key = key.astype(np.uint32)
    words = np.empty(_N, dtype=np.int64)
    _temper(key, words)
    return key, words, int(pos)


@numba.njit(cache=True, nogil=True)
def draw_mask(runs: int) -> int:
    """The bit mask numpy's legacy bounded draw uses for indices 0..runs-1: the smallest 2^k - 1 >= runs - 1."""
    mask = runs - 1
    for shift in (1, 2, 4, 8, 16):
        mask |= mask >> shift
    return mask


@numba.njit(cache=True, nogil=True)
def _twist(key: np.ndarray) -> None:
    """Regenerate all 624 words of the state (the MT19937 recurrence), in place."""
    for i in range(_N - _M):
        y = (np.int64(key[i]) & _UPPER) | (np.int64(key[i + 1]) & _LOWER)
        key[i] = np.int64(key[i + _M]) ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
    for i in range(_N - _M, _N - 1):
        y = (np.int64(key[i]) & _UPPER) | (np.int64(key[i + 1]) & _LOWER)
        key[i] = np.int64(key[i + _M - _N]) ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
    y = (np.int64(key[_N - 1]) & _UPPER) | (np.int64(key[0]) & _LOWER)
    key[_N - 1] = np.int64(key[_M - 1]) ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)


@numba.njit(cache=True, nogil=True)
def _temper(key: np.ndarray, words: np.ndarray) -> None:
    """The generator's 32-bit outputs for the current state: MT19937's tempering of each state word."""
    for i in range(_N):
        y = np.int64(key[i])
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        words[i] = y


@numba.njit(cache=True, nogil=True)
def _fill(key: np.ndarray, words: np.ndarray, pos: int, runs: int, out: np.ndarray) -> int:
    """Draw len(out) indices in 0..runs-1 as `RandomState.choice(runs, len(out))` does; returns the new position.

    Each output word is masked; a value > runs - 1 is overwritten by the next one (branch-free rejection)."""
    mask, last = draw_mask(runs), runs - 1
    k, n = 0, out.shape[0]
    while k < n:
        if pos == _N:
            _twist(key)
            _temper(key, words)
            pos = 0
        v = words[pos] & mask
        pos += 1
        out[k] = v
        k += v <= last
    return pos


@numba.njit(cache=True, nogil=True)
def draw_indices(key: np.ndarray, words: np.ndarray, pos: int, runs: int, count: int) -> np.ndarray:
    """`count` indices exactly as `RandomState.choice(runs, count)` draws them from this state (for tests)."""
    out = np.empty(count, dtype=np.int64)
    _fill(key, words, pos, runs, out)
    return out


@numba.njit(cache=True, nogil=True)
def aggregate_kernel(
    key: np.ndarray, words: np.ndarray, pos: int, values: np.ndarray, steps: int, reps: int, bins: np.ndarray,
    sorted_values: np.ndarray, thresholds: np.ndarray, want_task_means: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Statistics of `reps` stratified resamples of `values` (runs, tasks * steps), drawn in rliable's order.

    Column c is task c // steps at step c % steps; a step's cells are the (run, task) values of its columns.
    bins (runs * columns,): the histogram bin of cell (run, column): step * cells + its rank among the step's
    values; sorted_values (steps, cells): each step's values in ascending order; thresholds (steps, K): per
    step, how many of its values are <= each profile threshold (ascending). Returns task_means
    (reps, columns) (empty unless want_task_means), trimmed means (reps, steps), means of min(x, 1)
    (reps, steps) and counts of values above each threshold (reps, steps, K).
    """
    runs, columns = values.shape
    cells = runs * (columns // steps)  # values per step
    low = int(0.25 * cells)  # scipy.stats.trim_mean's cut
    high = cells - low
    k_count = thresholds.shape[1]
    flat = values.ravel()
    clipped_values = np.minimum(sorted_values, 1.0)
    drawn = np.empty(runs * columns, dtype=np.int64)
    task_means = np.zeros((reps if want_task_means else 0, columns))
    trimmed = np.empty((reps, steps))
    clipped = np.empty((reps, steps))
    above = np.empty((reps, steps, k_count), dtype=np.int64)
    sums = np.empty(columns)
    hist = np.zeros(steps * cells, dtype=np.int64)
    for rep in range(reps):
        pos = _fill(key, words, pos, runs, drawn)
        sums[:] = 0.0
        for r in range(runs):  # rows in order: each task's sum adds runs as numpy's mean over axis 0 does
            for c in range(columns):
                cell = drawn[r * columns + c] * columns + c
                sums[c] += flat[cell]
                hist[bins[cell]] += 1
        if want_task_means:
            for c in range(columns):
                task_means[rep, c] = sums[c] / runs
        for s in range(steps):  # one pass over the step's values in ascending order
            seen, middle, clip, k = 0, 0.0, 0.0, 0
            for j in range(cells):
                while k < k_count and thresholds[s, k] <= j:
                    above[rep, s, k] = cells - seen
                    k += 1
                h = hist[s * cells + j]
                hist[s * cells + j] = 0
                middle += max(min(seen + h, high) - max(seen, low), 0) * sorted_values[s, j]
                clip += h * clipped_values[s, j]
                seen += h
            while k < k_count:
                above[rep, s, k] = 0
                k += 1
            trimmed[rep, s] = middle / (high - low)
            clipped[rep, s] = clip / cells
    return task_means, trimmed, clipped, above


@numba.njit(cache=True, nogil=True)
def improvement_kernel(
    key: np.ndarray, words: np.ndarray, pos: int, nx: int, ny: int, reps: int, y_order: np.ndarray, below: np.ndarray,
    upto: np.ndarray,
) -> np.ndarray:
    """P(X > Y) per task for `reps` independent stratified resamples of x (nx runs) and y (ny runs).

    y_order (tasks, ny): y's runs of each task in ascending order of score; below / upto (tasks, nx): how
    many of y's values on that task are < / <= x's run i. A drawn pair counts 1 if x > y and 1/2 on a tie
    (the Mann-Whitney U statistic); returns (reps, tasks) of U / (nx * ny).
    """
    tasks = y_order.shape[0]
    drawn_x = np.empty(nx * tasks, dtype=np.int64)
    drawn_y = np.empty(ny * tasks, dtype=np.int64)
    cx = np.zeros((tasks, nx))
    cy = np.zeros((tasks, ny))
    cum = np.empty(ny + 1)
    out = np.empty((reps, tasks))
    for rep in range(reps):
        cx[:] = 0.0
        cy[:] = 0.0
        pos = _fill(key, words, pos, nx, drawn_x)
        pos = _fill(key, words, pos, ny, drawn_y)
        for k in range(nx * tasks):
            cx[k % tasks, drawn_x[k]] += 1.0
        for k in range(ny * tasks):
            cy[k % tasks, drawn_y[k]] += 1.0
        for t in range(tasks):
            cum[0] = 0.0
            for j in range(ny):
                cum[j + 1] = cum[j] + cy[t, y_order[t, j]]
            u = 0.0
            for i in range(nx):
                if cx[t, i]:
                    lt, le = cum[below[t, i]], cum[upto[t, i]]
                    u += cx[t, i] * (lt + 0.5 * (le - lt))
            out[rep, t] = u / (nx * ny)
    return out
