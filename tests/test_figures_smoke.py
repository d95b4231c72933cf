"""`twm-suite figures` on a real smoke checkpoint (Breakout): every figure is written, has a sensible size
and is not blank; bad checkpoints give one-line errors; the sampling simulation uses the real sampler."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.attention import attention_maps
from analysis.wm_figures import side_by_side_gif
from suite.cli import main as suite_main
from suite.figures import main
from twm.checkpoint import list_checkpoints
from twm.inspection import choose_start, imagine, load_run, real_segment, simulate_sampling

FIGURES = ["imagined_trajectory", "imagined_samples", "long_rollout", "attention_step", "attention_average",
           "frame_stacks", "balanced_sampling"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A short real smoke run (prefill 500, pretraining, 20 main-phase steps): ~40 s on 2 cores."""
    out = tmp_path_factory.mktemp("figures") / "run"
    cmd = [sys.executable, "-m", "twm.cli", "run", "--game", "Breakout", "--seed", "0", "--preset", "smoke",
           "--out", str(out), "--no-progress", "--set", "schedule.budget=40000", "--set", "runtime.eval_envs=1",
           "--set", "buffer.capacity=520", "--set", "schedule.pretrain_budget=4000",
           "--set", "schedule.eval_every=10000", "--set", "schedule.final_eval_episodes=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stdout[-3000:], result.stderr[-5000:])
    assert list_checkpoints(out)
    return out


@pytest.fixture(scope="module")
def figures(run_dir, tmp_path_factory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("figs")
    code = main([str(run_dir), "--out", str(out), "--horizon", "10", "--samples", "3", "--long", "48",
                 "--every", "6", "--attention-steps", "6", "--sampling-entries", "400", "--no-progress"])
    return code, out


@pytest.mark.parametrize("stem", FIGURES)
def test_each_figure_is_written_and_not_blank(figures, stem):
    code, out = figures
    assert code == 0
    png, svg = out / f"{stem}.png", out / f"{stem}.svg"
    assert svg.is_file() and svg.stat().st_size > 1000
    image = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    height, width = image.shape
    assert 120 <= height <= 3000 and 300 <= width <= 4000
    assert image.std() > 10.0  # not a blank canvas


def test_side_by_side_gif_of_the_run_has_one_frame_per_step(figures):
    code, out = figures
    gif = Image.open(out / "imagined_vs_real.gif")
    assert gif.n_frames == 11  # the start state and 10 imagined steps


def _bar_x(panel: np.ndarray) -> float:
    """Mean column of the bright pixels inside the image of one GIF panel (the mostly dark block; the titles'
    text is dark too, but thin)."""
    dark = panel < 60
    rows = np.flatnonzero(dark.mean(1) > 0.3)
    cols = np.flatnonzero(dark[rows].mean(0) > 0.3)
    image = panel[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return float(np.flatnonzero((image > 200).any(0)).mean())


def test_side_by_side_gif_shows_the_real_frames_left_and_the_imagined_right(tmp_path):
    T = 6
    real = np.zeros((T, 64, 64))
    imagined = np.zeros((T, 64, 64))
    for t in range(T):
        real[t, 20:44, 4 + 10 * t:10 + 10 * t] = 1.0  # a bar moving right
        imagined[t, 20:44, 40:46] = 1.0  # a bar standing still
    gif = Image.open(side_by_side_gif(real, imagined, tmp_path / "g.gif", np.linspace(-1, 1, T - 1)))
    assert gif.n_frames == T
    left, right = [], []
    for t in range(T):
        gif.seek(t)
        frame = np.asarray(gif.convert("L"), dtype=np.float64)
        half = frame.shape[1] // 2
        left.append(_bar_x(frame[:, :half]))
        right.append(_bar_x(frame[:, half:]))
    assert all(b > a for a, b in zip(left, left[1:], strict=False))  # frame t shows real[t] on the left
    assert max(right) - min(right) <= 1.0  # and imagined[t] (standing still) on the right


def test_imagination_shares_one_start_and_plays_the_given_actions(run_dir):
    run = load_run(run_dir)
    assert run.game == "Breakout" and run.env_step == run.buffer.size == 520
    start = choose_start(run.buffer, 8, np.random.default_rng(0))
    real = real_segment(run, start, 8)
    assert not real.dones.any() and len(real.actions) == 8
    np.testing.assert_allclose(real.stacks[0], run.buffer.obs[start].numpy() / 255.0)
    rollout = imagine(run, start, 8, samples=3, actions=real.actions, seed=1)
    assert rollout.stacks.shape == (3, 9, 4, 64, 64)
    np.testing.assert_array_equal(rollout.actions, np.stack([real.actions] * 3))
    assert (rollout.stacks[:, 0] == rollout.stacks[0, 0]).all()  # one shared start state ...
    assert np.abs(rollout.stacks[1:, -1] - rollout.stacks[0, -1]).max() > 0  # ... then independent samples
    again = imagine(run, start, 8, samples=3, actions=real.actions, seed=1)
    np.testing.assert_array_equal(rollout.stacks, again.stacks)  # seeded
    other_actions = imagine(run, start, 8, samples=3, actions=(real.actions + 1) % run.agent.num_actions, seed=1)
    np.testing.assert_array_equal(other_actions.stacks[:, 0], rollout.stacks[:, 0])  # same start and draws ...
    assert np.abs(other_actions.stacks[:, 1:] - rollout.stacks[:, 1:]).max() > 0  # ... the actions steer it


def test_long_rollouts_beyond_the_position_table(run_dir):
    run = load_run(run_dir)
    table = run.agent.dyn_model.transformer.sinusoids.shape[0]
    steps = table // 3 + 10  # more tokens than the initial relative-position table
    rollout = imagine(run, 1, steps, attention=True)
    assert rollout.frames.shape == (1, steps + 1, 64, 64)
    maps = attention_maps(rollout.attention, run.agent.dyn_model.tokens_per_step, run.config.dyn.memory_length)
    assert np.isfinite(maps["rollout"][-1]).all()


def test_balanced_sampling_spreads_selections_more_evenly_than_uniform():
    counts = simulate_sampling(300, (5.0, math.inf), batch_size=4, length=2, seed=0)
    assert all(len(v) == 299 and v.sum() == 4 * (300 - 4) for v in counts.values())
    first_third = {tau: v[:100].sum() / v.sum() for tau, v in counts.items()}
    assert first_third[math.inf] > first_third[5.0] > 1 / 3  # uniform favours old entries the most
    assert counts[5.0].max() < counts[math.inf].max()


def _figures(argv: list[str]) -> int:
    """`twm-suite figures ARGV` through the suite's command line."""
    return suite_main(["figures", *argv])


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert _figures([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("twm-suite: error:") and "does not exist" in err and "\n" not in err
    assert _figures([str(tmp_path)]) == 2
    assert "holds no checkpoints" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "checkpoints" / "ckpt-000000001.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    assert _figures([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt or unreadable" in err and "\n" not in err


def test_bad_numbers_are_rejected_before_loading(run_dir, capsys):
    assert _figures([str(run_dir), "--horizon", "0"]) == 2
    assert "--horizon must be at least 1" in capsys.readouterr().err
