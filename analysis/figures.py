"""Draw the paper's figures from already computed statistics; nothing is computed here. Each is saved as PNG and SVG.

Colours are colour-blind safe: ledger entries have fixed colours of Paul Tol's "muted" scheme, our runs and other
inputs take the Okabe-Ito colours in order (black first). Every method keeps one style (colour, line, marker)
in every figure of a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, MultipleLocator  # noqa: E402

from analysis.stats import METRICS, Interval  # noqa: E402

METRIC_TITLES = {"median": "Median", "iqm": "IQM", "mean": "Mean", "optimality_gap": "Optimality Gap"}


@dataclass(frozen=True)
class Style:
    """How one method is drawn everywhere."""

    color: str
    linestyle: str = "-"
    marker: str = "o"


# Paul Tol's "muted" qualitative colours (https://personal.sron.nl/~pault/), all told apart with colour blindness.
ROSE, INDIGO, SAND, GREEN, CYAN, WINE, TEAL, OLIVE, PURPLE = (
    "#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499")
# Score-ledger entries: the default report baselines get the solid colours, the others dashed ones.
LEDGER_STYLES: dict[str, Style] = {
    "TWM": Style(ROSE, "-", "o"), "IRIS": Style(INDIGO, "-", "s"), "STORM": Style(GREEN, "-", "^"),
    "DreamerV3": Style(SAND, "-", "v"), "DIAMOND": Style(CYAN, "-", "D"), "REM": Style(WINE, "-", "P"),
    "SPR": Style(TEAL, "-", "X"), "SimPLe": Style(OLIVE, "-", "*"), "BBF": Style(PURPLE, "-", "h"),
    "DrQ_eps": Style(INDIGO, "--", "<"), "CURL": Style(GREEN, "--", ">"), "EfficientZero": Style(ROSE, "--", "d"),
    "MuZero": Style(CYAN, "--", "p"),
}
# Everything else (our runs and variants, user score files) in order of appearance: the Okabe-Ito colours
# (Okabe & Ito 2008), black first, dashed so that they stand apart from the ledger's solid lines.
OTHER_STYLES = (Style("#000000", "-", "o"), Style("#D55E00", "--", "s"), Style("#0072B2", "--", "^"),
                Style("#E69F00", "--", "v"), Style("#009E73", "-.", "D"), Style("#CC79A7", "-.", "P"),
                Style("#56B4E9", ":", "X"))


def method_styles(names: list[str]) -> dict[str, Style]:
    """A style per method: fixed for ledger entries, the next of OTHER_STYLES for the rest (in order)."""
    styles, others = {}, 0
    for name in dict.fromkeys(names):
        if name in LEDGER_STYLES:
            styles[name] = LEDGER_STYLES[name]
        else:
            styles[name] = OTHER_STYLES[others % len(OTHER_STYLES)]
            others += 1
    return styles


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `stem`.png and `stem`.svg into `out_dir` and close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _padded(values: list[float], pad: float = 0.06) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return lo - pad * span, hi + pad * span


def aggregate_metrics(intervals: dict[str, dict[str, Interval]], styles: dict[str, Style],
                      title: str = "") -> plt.Figure:
    """Figure 3: one panel per metric, a CI bar and the point per method (human-normalised score).

    A method without interval (per-game means) is a hollow diamond; a metric it does not have is marked n/a.
    """
    names = list(intervals)
    fig, axes = plt.subplots(1, 4, figsize=(14, 0.45 * len(names) + 1.5), sharey=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        shown = [intervals[n][metric] for n in names if metric in intervals[n]]
        ends = [v for iv in shown for v in (iv.point, iv.lo, iv.hi) if v is not None]
        ax.set_xlim(*_padded(ends))
        for y, name in enumerate(names):
            iv = intervals[name].get(metric)
            color = styles[name].color
            if iv is None:
                ax.text(0.02, y, "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=8, color="0.4")
            elif iv.lo is None:
                ax.plot(iv.point, y, marker="D", ms=7, mfc="white", mec=color, mew=2, ls="none")
            else:
                ax.barh(y, iv.hi - iv.lo, left=iv.lo, height=0.6, color=color, alpha=0.75)
                ax.plot([iv.point, iv.point], [y - 0.3, y + 0.3], color="black", lw=1.5)
        ax.set_title(METRIC_TITLES[metric])
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("Human Normalized Score")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].set_ylim(len(names) - 0.4, -0.6)
    if any(intervals[n][m].lo is None for n in names for m in intervals[n]):
        fig.text(0.01, -0.02, "◇ per-game means (1 run per game): no interval; IQM and optimality gap not comparable",
                 fontsize=8, color="0.3")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def performance_profiles(
    profiles: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], styles: dict[str, Style],
    title: str = "",
) -> plt.Figure:
    """Figure 4: fraction of runs with HNS > tau, pointwise 95% CI bands and the 0.5 line (where a profile
    crosses it is the median); values are (taus, point, lo, hi)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, (taus, point, lo, hi) in profiles.items():
        st = styles[name]
        ax.plot(taus, point, color=st.color, ls=st.linestyle, marker=st.marker, markevery=max(1, len(taus) // 8),
                ms=5, label=name, lw=2)
        ax.fill_between(taus, lo, hi, color=st.color, alpha=0.15, lw=0)
    ax.axhline(0.5, color="black", ls="--", lw=1, alpha=0.5)
    taus = next(iter(profiles.values()))[0]
    ax.set_xlim(taus[0], taus[-1])
    ax.set_xlabel(r"Human Normalized Score ($\tau$)")
    ax.set_ylabel(r"Fraction of runs with score > $\tau$")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def probability_of_improvement(pairs: list[tuple[str, str, Interval]], styles: dict[str, Style],
                               title: str = "") -> plt.Figure:
    """P(X > Y) with its 95% CI per pair, rliable's layout: X on the left, Y (whose colour the bar has) on the
    right, a line at 0.5."""
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(pairs) + 1.4))
    for y, (_, y_name, iv) in enumerate(pairs):
        color = styles[y_name].color
        ax.barh(y, iv.hi - iv.lo, left=iv.lo, height=0.6, color=color, alpha=0.75)
        ax.plot([iv.point, iv.point], [y - 0.3, y + 0.3], color="black", lw=1.5)
    ax.axvline(0.5, color="black", ls="--", lw=1, alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(pairs) - 0.4, -0.6)
    ax.set_yticks(range(len(pairs)), [p[0] for p in pairs])
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(range(len(pairs)), [p[1] for p in pairs])
    ax.set_ylabel("Algorithm X")
    right.set_ylabel("Algorithm Y")
    ax.set_xlabel("P(X > Y)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _thousands(x: float, _pos: int) -> str:
    return f"{x / 1000:g}K" if x else "0"


def sample_efficiency(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], styles: dict[str, Style],
    title: str = "",
) -> plt.Figure:
    """IQM human-normalised score vs env steps with 95% CI bands (x ticks as 25K, 50K, ...)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (steps, point, lo, hi) in curves.items():
        st = styles[name]
        ax.plot(steps, point, color=st.color, ls=st.linestyle, label=name, lw=2, marker=st.marker, ms=3)
        ax.fill_between(steps, lo, hi, color=st.color, alpha=0.2, lw=0)
    ax.xaxis.set_major_locator(MultipleLocator(25_000))
    ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.set_xlabel("Environment steps")
    ax.set_ylabel("IQM Human Normalized Score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def ablation_curves(curves: pd.DataFrame, title: str, styles: dict[str, Style],
                    ylabel: str = "Human Normalized Score") -> plt.Figure:
    """Figures 7, 8, 15-18: one panel per game, the HNS during training of each variant (mean, min-max band),
    with one legend and one pair of axis labels for the whole grid.

    `curves` has columns variant, game, env_step, mean, min, max.
    """
    games = list(dict.fromkeys(curves["game"]))
    variants = list(dict.fromkeys(curves["variant"]))
    cols = min(4, len(games))
    rows = int(np.ceil(len(games) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows + 0.9), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, game in zip(axes.flat, games, strict=False):
        for variant in variants:
            c = curves[(curves["game"] == game) & (curves["variant"] == variant)].sort_values("env_step")
            if c.empty:
                continue
            st = styles[variant]
            ax.plot(c["env_step"], c["mean"], color=st.color, ls=st.linestyle, label=variant, lw=1.8)
            ax.fill_between(c["env_step"], c["min"], c["max"], color=st.color, alpha=0.2, lw=0)
        ax.set_title(game, fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MultipleLocator(25_000))
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    for ax in list(axes.flat)[len(games):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    fig.suptitle(title)
    fig.supxlabel("Environment steps")
    fig.supylabel(ylabel)
    return fig
