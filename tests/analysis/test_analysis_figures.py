"""Figures a paper can use: stable colour-blind-safe styles, nothing on the frame, rliable's layouts, colour bars."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import baselines, figures, stats, wm_figures
from analysis.stats import Interval


def _iv(point: float, lo: float | None = None, hi: float | None = None) -> Interval:
    return Interval(point, lo, hi)


def test_a_method_keeps_its_style_whatever_else_is_drawn():
    one = figures.method_styles(["Ours", "TWM", "STORM"])
    other = figures.method_styles(["STORM", "SPR", "Ours (base)", "Ours (x)", "TWM"])
    assert one["TWM"] == other["TWM"] and one["STORM"] == other["STORM"]
    assert one["Ours"] == other["Ours (base)"] == figures.OTHER_STYLES[0]
    defaults = figures.method_styles(["Ours", *baselines.DEFAULT_REPORT_BASELINES])
    assert len({s.color for s in defaults.values()}) == len(defaults)  # a report's default set: all colours differ
    every = figures.method_styles(baselines.names())
    assert len(set(every.values())) == len(every)


def test_aggregate_figure_keeps_every_marker_inside_the_frame_and_marks_per_game_means():
    intervals = {"TWM": {m: _iv(0.5, 0.4, 0.6) for m in stats.METRICS},
                 "EfficientZero": {"median": _iv(1.09), "mean": _iv(1.943)}}
    fig = figures.aggregate_metrics(intervals, figures.method_styles(list(intervals)))
    axes = fig.axes[:4]
    for ax, metric in zip(axes, stats.METRICS, strict=True):
        lo, hi = ax.get_xlim()
        for iv in (v[metric] for v in intervals.values() if metric in v):
            assert lo < min(x for x in (iv.point, iv.lo, iv.hi) if x is not None) and iv.point < hi
    assert [t.get_text() for t in axes[1].texts] == ["n/a"] and [t.get_text() for t in axes[3].texts] == ["n/a"]
    assert len(axes[0].patches) == 1  # a bar for TWM only: per-game means are a point without interval


def test_profiles_run_over_the_given_taus_with_the_half_line():
    taus = stats.profile_taus()
    assert (taus[0], taus[-1]) == (0.0, 2.0)
    fig = figures.performance_profiles({"TWM": (taus, 1 - taus / 2, 1 - taus / 2, 1 - taus / 2)},
                                       figures.method_styles(["TWM"]))
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 2.0)
    assert any(np.allclose(line.get_ydata(), 0.5) for line in ax.get_lines())


def test_probability_of_improvement_figure_has_the_pairs_on_both_sides_and_the_half_line():
    pairs = [("Ours", "TWM", _iv(0.6, 0.5, 0.7)), ("Ours", "STORM", _iv(0.4, 0.3, 0.5))]
    fig = figures.probability_of_improvement(pairs, figures.method_styles(["Ours", "TWM", "STORM"]))
    left, right = fig.axes
    fig.canvas.draw()
    assert [t.get_text() for t in left.get_yticklabels()] == ["Ours", "Ours"]
    assert [t.get_text() for t in right.get_yticklabels()] == ["TWM", "STORM"]
    assert any(np.allclose(line.get_xdata(), 0.5) for line in left.get_lines())


def test_ablation_grid_has_one_legend_and_one_pair_of_axis_labels_and_25k_ticks():
    rows = [(v, g, s, m, m, m) for v, k in (("base", 1.0), ("uniform", 0.5)) for g in ("Pong", "Breakout", "Hero")
            for s in range(25_000, 100_001, 25_000) for m in [k * s / 1e5]]
    frame = pd.DataFrame(rows, columns=["variant", "game", "env_step", "mean", "min", "max"])
    fig = figures.ablation_curves(frame, "Figure 7: base vs uniform", figures.method_styles(["base", "uniform"]))
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in panels)
    assert all(ax.get_xlabel() == "" and ax.get_ylabel() == "" for ax in panels)
    assert fig.get_supxlabel() == "Environment steps" and fig.get_supylabel() == "Human Normalized Score"
    assert "25K" in [t.get_text() for t in panels[0].get_xticklabels()]


def test_attention_maps_have_a_colour_bar_per_panel():
    kinds = np.array([1, 2, 0, 1, 2, 0, 1])
    raw = np.full((2, len(kinds)), 1 / len(kinds))
    fig = wm_figures.attention_map(raw, raw, np.zeros(2), kinds)
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("attention / row max")]
    assert len(bars) == 2 and len(fig.legends) == 1
