"""Replay buffer: balanced sampling distribution, uniform tau = inf, sequence gathering (spec §9)."""

import math

import numpy as np
import pytest
import torch

from twm.checkpoint import CorruptCheckpointError
from twm.replay import ReplayBuffer


def filled_buffer(size: int, capacity: int | None = None) -> ReplayBuffer:
    buf = ReplayBuffer(capacity or size, (4, 8, 8))
    buf.set_current_obs(np.zeros((4, 8, 8), np.uint8))
    for i in range(size):
        buf.append(i % 5, float(i), terminated=(i % 7 == 6), truncated=False, next_obs=np.full((4, 8, 8), i + 1))
    return buf


def test_balanced_sampler_frequencies_match_softmax_of_visits():
    torch.manual_seed(0)
    buf = filled_buffer(40)
    length, tau = 4, 20.0
    num_starts = buf.size - length + 1
    visits = torch.arange(num_starts) * 3  # 0 .. 108: probabilities differ by a factor ~200
    expected = torch.softmax(-visits.double() / tau, 0).numpy()
    draws = 40_000
    counts = np.zeros(num_starts)
    for _ in range(draws):
        buf.visits[:num_starts] = visits
        counts[buf.sample_starts(1, length, tau).item()] += 1
    empirical = counts / draws
    # binomial standard error per entry; 5 sigma bound
    sigma = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(empirical - expected) <= 5 * sigma + 1e-4)
    assert empirical[0] > 10 * empirical[-1]  # rarely visited starts are preferred


def test_infinite_temperature_is_exactly_uniform_whatever_the_visits():
    torch.manual_seed(1)
    buf = filled_buffer(30)
    length = 4
    num_starts = buf.size - length + 1
    draws = 30_000
    counts = np.zeros(num_starts)
    for _ in range(draws):
        buf.visits[:num_starts] = torch.arange(num_starts) * 1000
        counts[buf.sample_starts(1, length, math.inf).item()] += 1
    p = 1 / num_starts
    assert np.all(np.abs(counts / draws - p) <= 5 * np.sqrt(p * (1 - p) / draws))


def test_sampled_starts_are_distinct_and_counted():
    buf = filled_buffer(50)
    starts = buf.sample_starts(20, 5, 20.0)
    assert len(set(starts.tolist())) == 20
    assert starts.max() <= buf.size - 5
    assert buf.visits.sum() == 20 and buf.visits[starts].eq(1).all()
    with pytest.raises(ValueError, match="distinct starts"):
        buf.sample_starts(47, 5, 20.0)


def test_gather_has_context_step_next_observation_and_start_zero_padding():
    buf = filled_buffer(20)
    batch = buf.gather(torch.tensor([0, 5]), 4)
    assert batch.obs.shape == (2, 6, 4, 8, 8) and batch.actions.shape == (2, 5)
    # start 5: context step 4, window 5..8, next observation 9
    assert batch.obs[1, :, 0, 0, 0].tolist() == [4, 5, 6, 7, 8, 9]
    assert batch.actions[1].tolist() == [4 % 5, 5 % 5, 6 % 5, 7 % 5, 8 % 5]
    assert batch.rewards[1].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert batch.terminated[1].tolist() == [False, False, True, False, False]
    # start 0: the context repeats obs[0] with action 0, reward 0 and the flags of index 0
    assert batch.obs[0, :, 0, 0, 0].tolist() == [0, 0, 1, 2, 3, 4]
    assert batch.actions[0, 0] == 0 and batch.rewards[0, 0] == 0.0


def test_uniform_epoch_covers_non_overlapping_starts_without_counting_visits():
    torch.manual_seed(2)
    buf = filled_buffer(100)
    starts = torch.cat(list(buf.uniform_epoch(16, 4)))
    ordered = starts.sort().values
    assert (ordered.diff() == 16).all() and ordered[0] < 16 and ordered[-1] < buf.size - 16
    assert buf.visits.sum() == 0


def test_state_dict_round_trip_and_full_buffer_error(tmp_path):
    buf = filled_buffer(10, capacity=10)
    buf.sample_starts(3, 4, 20.0)
    buf.save_frames(tmp_path)
    other = ReplayBuffer(10, (4, 8, 8))
    other.load_state_dict(buf.state_dict(), tmp_path)
    assert other.size == 10 and torch.equal(other.obs, buf.obs) and torch.equal(other.visits, buf.visits)
    with pytest.raises(RuntimeError, match="full"):
        buf.append(0, 0.0, False, False, np.zeros((4, 8, 8)))


def test_frames_are_appended_once_and_never_rewritten(tmp_path):
    buf = filled_buffer(6, capacity=20)
    buf.save_frames(tmp_path)
    first = tmp_path / "frames-000000000-000000007.u8"
    before = (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes())
    buf.save_frames(tmp_path)  # nothing new: nothing written
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    for i in range(6, 15):
        buf.append(1, 0.5, False, i == 12, np.full((4, 8, 8), 100 + i))
    buf.save_frames(tmp_path)
    second = tmp_path / "frames-000000007-000000016.u8"
    assert second.stat().st_size == 9 * buf.frame_nbytes  # only the 9 new frame stacks
    assert (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes()) == before
    restored = ReplayBuffer(20, (4, 8, 8))
    restored.load_state_dict(buf.state_dict(), tmp_path)
    assert torch.equal(restored.obs, buf.obs) and torch.equal(restored.truncated, buf.truncated)
    assert restored.size == 15 and restored.frames == buf.frames


def test_altered_missing_or_short_frame_files_are_detected_and_unlisted_ones_removed(tmp_path):
    buf = filled_buffer(8, capacity=20)
    buf.save_frames(tmp_path)
    state = buf.state_dict()
    path = tmp_path / state["frames"][0]["file"]
    good = path.read_bytes()
    path.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
        ReplayBuffer(20, (4, 8, 8)).load_state_dict(state, tmp_path)
    path.write_bytes(good[:-1])
    with pytest.raises(CorruptCheckpointError, match="has .* bytes"):
        ReplayBuffer(20, (4, 8, 8)).load_state_dict(state, tmp_path)
    path.unlink()
    with pytest.raises(CorruptCheckpointError, match="missing"):
        ReplayBuffer(20, (4, 8, 8)).load_state_dict(state, tmp_path)
    stray = tmp_path / "frames-000000009-000000012.u8"
    stray.write_bytes(b"x")
    path.write_bytes(good)
    buf.remove_unlisted_frames(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
