"""Draw the paper's figures from already computed statistics; nothing is computed here. Each is saved as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.stats import METRICS, Interval  # noqa: E402

METRIC_TITLES = {"median": "Median", "iqm": "IQM", "mean": "Mean", "optimality_gap": "Optimality Gap"}


def _colors(names: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `stem`.png and `stem`.svg into `out_dir` and close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def aggregate_metrics(intervals: dict[str, dict[str, Interval]], title: str = "") -> plt.Figure:
    """Figure 3: one panel per metric, a CI bar and point per method (human-normalised score)."""
    names = list(intervals)
    colors = _colors(names)
    fig, axes = plt.subplots(1, 4, figsize=(14, 0.45 * len(names) + 1.4), sharey=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        for y, name in enumerate(names):
            iv = intervals[name][metric]
            ax.barh(y, iv.hi - iv.lo, left=iv.lo, height=0.6, color=colors[name], alpha=0.75)
            ax.plot([iv.point, iv.point], [y - 0.3, y + 0.3], color="black", lw=1.5)
        ax.margins(x=0.08)
        ax.set_title(METRIC_TITLES[metric])
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("Human Normalized Score")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def performance_profiles(
    profiles: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], title: str = ""
) -> plt.Figure:
    """Figure 4: fraction of runs with HNS > tau, with pointwise 95% CI bands; values are (taus, point, lo, hi)."""
    colors = _colors(list(profiles))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (taus, point, lo, hi) in profiles.items():
        ax.plot(taus, point, color=colors[name], label=name, lw=2)
        ax.fill_between(taus, lo, hi, color=colors[name], alpha=0.2)
    ax.set_xlabel(r"Human Normalized Score ($\tau$)")
    ax.set_ylabel(r"Fraction of runs with score > $\tau$")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def sample_efficiency(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    reference: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, title: str = "",
) -> plt.Figure:
    """IQM human-normalised score vs env steps with 95% CI bands; `reference` adds dashed point series."""
    colors = _colors(list(curves) + list(reference or {}))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (steps, point, lo, hi) in curves.items():
        ax.plot(steps, point, color=colors[name], label=name, lw=2, marker="o", ms=3)
        ax.fill_between(steps, lo, hi, color=colors[name], alpha=0.2)
    for name, (steps, values) in (reference or {}).items():
        ax.plot(steps, values, color=colors[name], ls="--", marker="s", label=name)
    ax.set_xlabel("Environment steps")
    ax.set_ylabel("IQM Human Normalized Score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def ablation_curves(curves: pd.DataFrame, title: str, ylabel: str = "Human Normalized Score") -> plt.Figure:
    """Figures 7, 8, 15-18: one panel per game, the HNS during training of each variant (mean, min-max band).

    `curves` has columns variant, game, env_step, mean, min, max.
    """
    games = list(dict.fromkeys(curves["game"]))
    variants = list(dict.fromkeys(curves["variant"]))
    colors = _colors(variants)
    cols = min(4, len(games))
    rows = int(np.ceil(len(games) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games, strict=False):
        for variant in variants:
            c = curves[(curves["game"] == game) & (curves["variant"] == variant)].sort_values("env_step")
            if c.empty:
                continue
            ax.plot(c["env_step"], c["mean"], color=colors[variant], label=variant, lw=1.8)
            ax.fill_between(c["env_step"], c["min"], c["max"], color=colors[variant], alpha=0.2)
        ax.set_title(game)
        ax.grid(alpha=0.3)
        ax.set_xlabel("Environment steps")
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(games):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
