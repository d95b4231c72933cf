"""Draw the world-model figures of the paper (Fig. 2, 5, 6, 9-14) from plain numpy arrays; nothing is
computed from a model here (that is `twm.inspection`). Figures are saved as PNG and SVG, the side-by-side
rollout as a GIF (matplotlib's PillowWriter; MP4 would need ffmpeg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import animation  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, Normalize  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis.figures import save  # noqa: E402

# Token colours of the released attention renderer (spec §14): z blue, a red, r green / purple / white.
Z_COLOR, A_COLOR = np.array([0.25, 0.45, 1.0]), np.array([1.0, 0.25, 0.25])
R_POSITIVE, R_NEGATIVE, R_ZERO = np.array([0.2, 0.85, 0.2]), np.array([0.7, 0.3, 0.9]), np.array([0.9, 0.9, 0.9])
OUTSIDE_COLOR = np.array([0.6, 0.6, 0.6])
# Frame-stack overlay: oldest to newest frame.
STACK_COLORS = np.array([[0.2, 0.4, 1.0], [0.1, 0.9, 0.9], [1.0, 0.85, 0.1], [1.0, 0.2, 0.2]])


def _action_label(action: int, names: Sequence[str] | None) -> str:
    return names[action] if names is not None and 0 <= action < len(names) else str(action)


def _frame_axis(ax: plt.Axes, frame: np.ndarray, border: str | None = None) -> None:
    ax.imshow(frame, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_color(border)
            spine.set_linewidth(2.5)


# --------------------------------------------------------------------- imagined trajectories
def trajectory_strip(frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray,
                     row_labels: Sequence[str], action_names: Sequence[str] | None = None,
                     title: str = "") -> plt.Figure:
    """Fig. 5, 9, 12: rows of frames (R, T+1, 64, 64); above frame t the action taken there and the
    reward of that step (R, T). A red border marks a step that ended an episode (the next frame restarts)."""
    R, T1 = frames.shape[:2]
    fig, axes = plt.subplots(R, T1, figsize=(0.95 * T1, 1.25 * R + 0.4), squeeze=False)
    for row in range(R):
        for t in range(T1):
            ax = axes[row, t]
            ended = t < T1 - 1 and bool(dones[row, t])
            _frame_axis(ax, frames[row, t], "red" if ended else None)
            if t < T1 - 1:
                reward = float(rewards[row, t])
                color = "green" if reward >= 0.1 else "purple" if reward <= -0.1 else "black"
                ax.set_title(f"{_action_label(int(actions[row, t]), action_names)}\nr={reward:+.2f}",
                             fontsize=6, color=color, pad=2)
        axes[row, 0].set_ylabel(row_labels[row], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.45, top=0.84 if title else 0.9)
    return fig


def long_rollout(frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray, every: int,
                 per_row: int = 10, action_names: Sequence[str] | None = None, title: str = "") -> plt.Figure:
    """Fig. 13: every `every`-th frame of one long rollout (H+1, 64, 64); above each shown frame its step
    and the rewards summed since the previous shown frame (a red border: an episode ended in between)."""
    shown = np.arange(0, frames.shape[0], every)
    rows = int(np.ceil(len(shown) / per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(1.0 * per_row, 1.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, t in enumerate(shown):
        ax = axes.flat[i]
        ax.axis("on")
        since = slice(max(t - every, 0), t)
        ended = bool(np.any(dones[since]))
        _frame_axis(ax, frames[t], "red" if ended else None)
        total = float(np.sum(rewards[since]))
        label = f"t={t}" if t == 0 else f"t={t}  Σr={total:+.2f}"
        if t < len(actions):
            label += f"\n{_action_label(int(actions[t]), action_names)}"
        ax.set_title(label, fontsize=6, pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.5, top=0.9 if rows > 2 else 0.8)
    return fig


# ----------------------------------------------------------------------------- attention maps
def _token_colors(kinds: np.ndarray, token_rewards: np.ndarray | None) -> np.ndarray:
    """(W, 3) colour per token: z blue, a red, r by sign (green/purple/white, |r| < 0.1 white)."""
    colors = np.empty((len(kinds), 3))
    for i, kind in enumerate(kinds):
        if kind == 0:
            colors[i] = Z_COLOR
        elif kind == 1:
            colors[i] = A_COLOR
        else:
            r = np.nan if token_rewards is None else token_rewards[i]
            colors[i] = (R_POSITIVE if not np.isfinite(r) or r >= 0.1
                         else R_NEGATIVE if r <= -0.1 else R_ZERO)
    return colors


def _token_names(kinds: np.ndarray) -> list[str]:
    """Labels z-3 a-3 r-3 ... z a: the step offset of each token before the current (z, a)."""
    W, P = len(kinds), 3 if 2 in kinds else 2
    backs = [0 if i >= W - 2 else (W - 3 - i) // P + 1 for i in range(W)]
    return ["zar"[kind] + (f"-{back}" if back else "") for kind, back in zip(kinds, backs, strict=True)]


def attention_map(raw: np.ndarray, rollout: np.ndarray, outside: np.ndarray, kinds: np.ndarray,
                  token_rewards: np.ndarray | None = None, title: str = "") -> plt.Figure:
    """Fig. 6, 10, 11: per layer (rows, last layer on top) the attention of the current a token over its
    window of input tokens (columns, current z, a at the right), raw (head mean) and rolled out.

    raw, rollout (L, W) (NaN = no token yet), outside (L,) rollout mass on tokens older than the window
    (the grey column at the left). Intensity is each row divided by its maximum over the tokens other than
    the current a token (clipped to 1); colour is the modality. Each panel has a colour bar of that intensity
    and the figure a legend of the modality colours."""
    colors = _token_colors(kinds, token_rewards)
    L, W = raw.shape
    names = _token_names(kinds)
    fig, axes = plt.subplots(2, 1, figsize=(max(5.0, 0.19 * (W + 1) + 2.3), 0.32 * 2 * L + 2.8))
    intensity_map = LinearSegmentedColormap.from_list("intensity", ["black", "white"])
    panels = (("raw attention (head mean)", raw, np.zeros(L)), ("attention rollout", rollout, outside))
    for ax, (name, values, older) in zip(axes, panels, strict=True):
        v = np.nan_to_num(np.concatenate([older[:, None], values], 1))  # (L, W+1)
        # Scaled by the largest value among the other tokens: the a token itself (residual mass in the
        # rollout) would otherwise wash every other column out; it is clipped to full intensity.
        intensity = np.clip(v / np.maximum(v[:, :-1].max(1, keepdims=True), 1e-12), 0.0, 1.0)
        rgb = intensity[..., None] * np.concatenate([OUTSIDE_COLOR[None], colors])[None]  # (L, W+1, 3)
        ax.imshow(rgb[::-1], aspect="auto", interpolation="nearest")
        ax.set_yticks(range(L), [f"layer {layer + 1}" for layer in range(L)][::-1], fontsize=6)
        ax.set_xticks(range(W + 1), ["older"] + names, rotation=90, fontsize=5)
        ax.set_title(name + (f"   (mass on older tokens, last layer: {older[-1]:.2f})" if older.any() else ""),
                     fontsize=8)
        bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), intensity_map), ax=ax, fraction=0.04, pad=0.02,
                           ticks=[0.0, 0.5, 1.0])
        bar.set_label("attention / row max\n(other tokens)", fontsize=6)
        bar.ax.tick_params(labelsize=6)
    legend = [Patch(color=Z_COLOR, label="z"), Patch(color=A_COLOR, label="a"),
              Patch(color=R_POSITIVE, label="r ≥ 0.1"), Patch(color=R_NEGATIVE, label="r ≤ −0.1"),
              Patch(facecolor=R_ZERO, edgecolor="0.5", label="|r| < 0.1"), Patch(color=OUTSIDE_COLOR, label="older")]
    fig.legend(handles=legend, loc="lower center", ncols=len(legend), fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


# ----------------------------------------------------------------------- frame-stack overlays
def stack_overlay(stack: np.ndarray) -> np.ndarray:
    """(4, 64, 64) in [0, 1] -> RGB (64, 64, 3): frame i tinted STACK_COLORS[i] and the tints summed,
    scaled so that a pixel bright in every frame is white; a moving object leaves a coloured trail."""
    colors = STACK_COLORS[-len(stack):]
    tinted = (stack[:, :, :, None] * colors[:, None, None, :]).sum(0) / colors.sum(0)  # (64, 64, 3)
    return np.clip(tinted, 0.0, 1.0) ** 0.6


def frame_stacks(stacks: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
                 title: str = "") -> plt.Figure:
    """Fig. 14: frame stacks (R, C, 4, 64, 64) drawn as one image each, the 4 frames in 4 colours
    (oldest blue, cyan, yellow, newest red), so motion shows as a colour trail."""
    R, C = stacks.shape[:2]
    fig, axes = plt.subplots(R, C, figsize=(1.3 * C + 0.8, 1.4 * R + 0.6), squeeze=False)
    for r in range(R):
        for c in range(C):
            ax = axes[r, c]
            ax.imshow(stack_overlay(stacks[r, c]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_labels[c], fontsize=7)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- balanced sampling
def balanced_sampling(counts: dict[str, np.ndarray], title: str = "") -> plt.Figure:
    """Fig. 2: selection count per buffer entry (left) and the cumulative share of all selections that went
    to entries 0..i (right), one line per sampling temperature, for a buffer that grew one entry per step."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for label, visits in counts.items():
        index = np.arange(len(visits))
        left.plot(index, visits, lw=0.8, label=label)
        right.plot(index, np.cumsum(visits) / max(visits.sum(), 1), lw=1.2, label=label)
    left.set_xlabel("buffer entry (insertion order)")
    left.set_ylabel("times selected")
    right.plot([0, len(visits) - 1], [0, 1], color="black", ls=":", lw=0.8, label="equal share")
    right.set_xlabel("buffer entry (insertion order)")
    right.set_ylabel("cumulative share of selections")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------- animation
def side_by_side_gif(real: np.ndarray, imagined: np.ndarray, path: Path, rewards: np.ndarray | None = None,
                     fps: int = 6, title: str = "") -> Path:
    """GIF of the real frames (T, 64, 64) next to the imagined ones (T, 64, 64) from the same start,
    with the step (and the predicted reward) in the caption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(4.2, 2.5))
    images = []
    for ax, frames, name in zip(axes, (real, imagined), ("real", "imagined"), strict=True):
        images.append(ax.imshow(frames[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest"))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    caption = fig.suptitle("", fontsize=8)

    def draw(t: int):
        images[0].set_data(real[t])
        images[1].set_data(imagined[t])
        text = f"{title}  step {t}" if title else f"step {t}"
        if rewards is not None and 0 < t <= len(rewards):
            text += f"  r̂={float(rewards[t - 1]):+.2f}"
        caption.set_text(text)
        return [*images, caption]

    frames = min(len(real), len(imagined))
    movie = animation.FuncAnimation(fig, draw, frames=frames, blit=False)
    movie.save(path, writer=animation.PillowWriter(fps=fps), dpi=80)
    plt.close(fig)
    return path


__all__ = ["attention_map", "balanced_sampling", "frame_stacks", "long_rollout", "save", "side_by_side_gif",
           "stack_overlay", "trajectory_strip"]
