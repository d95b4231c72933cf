"""Replay buffer with balanced sampling (spec §9).

The buffer holds every transition of the run (no eviction). Index i stores the frame stack obs[i],
the action taken there, its tanh reward and its terminated/truncated flags; obs[size] is always the
current, not-yet-acted-on observation. Visit counts v_i per possible sequence start drive the
balanced sampler p = softmax(-v / tau); tau = inf is exactly uniform.

A stored frame stack never changes, so checkpoints do not rewrite them: each checkpoint appends the frames
since the previous one as one new frame file (`frames-<start>-<stop>.u8`, raw uint8, written once,
atomically, with its SHA-256) and lists every file it needs; the small arrays and the visit counts go into
the checkpoint itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from twm.checkpoint import CorruptCheckpointError, write_file_atomic
from twm.sampling import balanced_starts

_FRAMES = re.compile(r"^frames-\d{9}-\d{9}\.u8$")
_READ_CHUNK = 4096  # frame stacks per read (64 MiB at 4x64x64)


@dataclass
class SeqBatch:
    """N sequences of length L from the buffer, with one context step before and the next
    observation after (spec §5). Index 0 along time is step `start-1`."""

    actions: torch.Tensor  # int64 (N, L+1): steps start-1 .. start+L-1
    rewards: torch.Tensor  # float32 (N, L+1): tanh rewards of those steps
    terminated: torch.Tensor  # bool (N, L+1)
    truncated: torch.Tensor  # bool (N, L+1)
    obs: torch.Tensor | None = None  # uint8 (N, L+2, 4, 64, 64): steps start-1 .. start+L
    logits: torch.Tensor | None = None  # float (N, L+2, C, K): cached encoder logits (pretraining)


class ReplayBuffer:
    """All transitions of one run, stored on `device` (observations as uint8)."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], device: torch.device | str = "cpu"):
        self.capacity = capacity
        self.device = torch.device(device)
        self.obs = torch.zeros((capacity + 1, *obs_shape), dtype=torch.uint8, device=self.device)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.truncated = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.visits = torch.zeros(capacity, dtype=torch.long, device=self.device)  # per sequence start
        self.size = 0
        # The frame files holding obs[0 : stop of the last one]: {"file", "start", "stop", "sha256"}
        self.frames: list[dict] = []

    # ------------------------------------------------------------------------------- writing
    def set_current_obs(self, obs) -> None:
        """Store the observation the agent acts on next (after reset, or the first one)."""
        self.obs[self.size] = torch.as_tensor(obs, device=self.device)

    def append(self, action: int, reward: float, terminated: bool, truncated: bool, next_obs) -> None:
        """Record one env step; `next_obs` is the reset observation if the step ended an episode."""
        if self.size >= self.capacity:
            raise RuntimeError(f"replay buffer is full ({self.capacity} transitions)")
        i = self.size
        self.actions[i] = action
        self.rewards[i] = reward
        self.terminated[i] = terminated
        self.truncated[i] = truncated
        self.obs[i + 1] = torch.as_tensor(next_obs, device=self.device)
        self.size += 1

    def mark_truncated_last(self) -> None:
        """Turn the last transition into an episode boundary (used when a resumed run restarts
        its environment, so no sequence pretends the old and new game are continuous)."""
        if self.size > 0:
            self.truncated[self.size - 1] = True

    # ------------------------------------------------------------------------------ sampling
    def sample_starts(self, n: int, length: int, temperature: float) -> torch.Tensor:
        """n distinct sequence starts from softmax(-v/tau) (uniform for tau = inf); counts visits."""
        num_starts = self.size - length + 1
        if n > num_starts:
            raise ValueError(f"cannot draw {n} distinct starts from {num_starts} (buffer size {self.size})")
        return balanced_starts(self.visits, num_starts, n, temperature)  # (n,), on the buffer's device

    def uniform_epoch(self, length: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Pretraining loader: non-overlapping starts offset, offset+L, ... < size-L with a random
        offset in [0, L-1], shuffled, in batches; visit counts are not touched (spec §9)."""
        offset = int(torch.randint(length, ()).item())
        starts = torch.arange(offset, self.size - length, length)
        starts = starts[torch.randperm(len(starts))]
        yield from starts.split(batch_size)

    def sample_obs(self, n: int) -> torch.Tensor:
        """n uniformly random stored observations (imagination restarts), uint8 (n, 4, 64, 64)."""
        index = torch.randint(self.size, (n,), device=self.device)
        return self.obs[index]

    def gather(self, starts: torch.Tensor, length: int, *, logits: torch.Tensor | None = None) -> SeqBatch:
        """Sequences start..start+L-1 with the context step start-1 and the next observation.

        At start = 0 the context observation repeats obs[0], with action 0, reward 0 and the
        flags of index 0 (spec §9). With `logits` (cached encoder logits for obs indices
        0..size) the batch carries logits instead of pixels.
        """
        starts = starts.to(self.device)
        steps = starts[:, None] + torch.arange(-1, length, device=self.device)  # (N, L+1)
        first = steps < 0
        clamped = steps.clamp(min=0)
        actions = self.actions[clamped].masked_fill(first, 0)
        rewards = self.rewards[clamped].masked_fill(first, 0.0)
        obs_index = torch.cat([clamped, (starts + length)[:, None]], dim=1)  # (N, L+2)
        batch = SeqBatch(actions, rewards, self.terminated[clamped], self.truncated[clamped])
        if logits is None:
            batch.obs = self.obs[obs_index]
        else:
            batch.logits = logits[obs_index.to(logits.device)]
        return batch

    # ---------------------------------------------------------------------------- checkpoint
    @property
    def frame_nbytes(self) -> int:
        return self.obs[0].numel()

    def unsaved_frame_bytes(self) -> int:
        """Bytes `save_frames` would write now: the frames since the last frame file."""
        saved = self.frames[-1]["stop"] if self.frames else 0
        return max(self.size + 1 - saved, 0) * self.frame_nbytes

    def save_frames(self, folder: Path) -> None:
        """Append obs[saved : size+1] as one new frame file; earlier files are never rewritten. On the GPU
        only the new frames are copied to the host; on the CPU they are written (and hashed) in place."""
        start = self.frames[-1]["stop"] if self.frames else 0
        stop = self.size + 1
        if stop <= start:
            return
        data = memoryview(self.obs[start:stop].cpu().numpy()).cast("B")
        name = f"frames-{start:09d}-{stop:09d}.u8"
        write_file_atomic(Path(folder) / name, lambda f: f.write(data), len(data),
                          f"replay frames {start}..{stop - 1} ({name})")
        self.frames.append({"file": name, "start": start, "stop": stop, "sha256": hashlib.sha256(data).hexdigest()})

    def remove_unlisted_frames(self, folder: Path) -> None:
        """Delete frame files that no kept checkpoint lists: every kept checkpoint's list is a prefix of the
        newest one's, which is this buffer's."""
        listed = {segment["file"] for segment in self.frames}
        for path in Path(folder).iterdir() if Path(folder).is_dir() else ():
            if _FRAMES.match(path.name) and path.name not in listed:
                path.unlink(missing_ok=True)

    def state_dict(self) -> dict:
        """Everything but the frames: it lists the frame files, so `save_frames` comes first."""
        n = self.size
        return {
            "size": n,
            "obs_shape": list(self.obs.shape[1:]),
            "frames": [dict(segment) for segment in self.frames],
            "actions": self.actions[:n].to("cpu", copy=True),
            "rewards": self.rewards[:n].to("cpu", copy=True),
            "terminated": self.terminated[:n].to("cpu", copy=True),
            "truncated": self.truncated[:n].to("cpu", copy=True),
            "visits": self.visits.to("cpu", copy=True),
        }

    def load_state_dict(self, state: dict, folder: Path) -> None:
        """Restore a checkpoint's buffer, reading its frame files from `folder` and verifying each one's
        checksum (CorruptCheckpointError for a missing, short or altered file)."""
        n = int(state["size"])
        if n > self.capacity or tuple(state["obs_shape"]) != tuple(self.obs.shape[1:]):
            raise ValueError(f"buffer checkpoint of size {n} does not fit capacity {self.capacity}")
        frames = [dict(segment) for segment in state["frames"]]
        bounds = [0] + [segment["stop"] for segment in frames]
        if [segment["start"] for segment in frames] != bounds[:-1] or bounds[-1] != n + 1:
            raise CorruptCheckpointError(f"the buffer's frame files in {folder} do not cover frames 0..{n}")
        for segment in frames:
            self._read_frames(Path(folder), segment)
        self.size = n
        self.actions[:n] = state["actions"].to(self.device)
        self.rewards[:n] = state["rewards"].to(self.device)
        self.terminated[:n] = state["terminated"].to(self.device)
        self.truncated[:n] = state["truncated"].to(self.device)
        self.visits.copy_(state["visits"].to(self.device))
        self.frames = frames

    def _read_frames(self, folder: Path, segment: dict) -> None:
        """Read one frame file into obs[start:stop] (on the CPU straight into the buffer) and check it."""
        path, start, stop = folder / segment["file"], segment["start"], segment["stop"]
        expected = (stop - start) * self.frame_nbytes
        size = path.stat().st_size if path.exists() else None
        if size != expected:
            found = "is missing" if size is None else f"has {size} bytes, not {expected}"
            raise CorruptCheckpointError(f"replay frame file {path} {found}")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for a in range(start, stop, _READ_CHUNK):
                b = min(a + _READ_CHUNK, stop)
                host = self.obs[a:b] if self.device.type == "cpu" else torch.empty_like(self.obs[a:b], device="cpu")
                view = memoryview(host.numpy()).cast("B")
                done = 0
                while done < len(view):
                    got = f.readinto(view[done:])
                    if not got:
                        raise CorruptCheckpointError(f"replay frame file {path} ended early")
                    done += got
                digest.update(view)
                if self.device.type != "cpu":
                    self.obs[a:b].copy_(host)
        if digest.hexdigest() != segment["sha256"]:
            raise CorruptCheckpointError(f"replay frame file {path}: checksum mismatch")
