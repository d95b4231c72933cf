"""Atomic, safe-to-load checkpoints of everything a run needs to continue exactly.

A checkpoint is one `torch.save` file written to a temporary name, fsynced and renamed, so a crash
mid-write never leaves a half file under a checkpoint's name. Loading uses `weights_only=True`:
only tensors and plain containers are ever unpickled. RNG states and the emulator state are
converted to tensors and strings for that reason.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twm.run_record import CHECKPOINTS, fsync_dir, temp_path

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded (one-line message naming the file)."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (ordered by their sequence number)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` atomically as the next checkpoint and delete all but the newest `keep`."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    existing = list_checkpoints(run_dir)
    number = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1
    path = folder / f"ckpt-{number:09d}.pt"
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint file without unpickling arbitrary objects."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad magic, disallowed global, ...
        older = [p.name for p in list_checkpoints(path.parent.parent) if p != path]
        hint = f"; the previous good checkpoint {older[-1]} is kept" if older else ""
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]}){hint}; delete the bad file to resume from an older one"
        ) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"checkpoint {path} is not a twm checkpoint")
    return state


# --------------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- env state
def _wrappers(env) -> list:
    chain = []
    while True:
        chain.append(env)
        if not hasattr(env, "env"):
            return chain
        env = env.env


def _scalars(obj) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items()
            if isinstance(v, (bool, int, float, str, type(None))) and not k.startswith("__")}


def env_state(env) -> dict[str, Any]:
    """The training env's exact state: emulator (with its RNG), the reset-noop RNG, each wrapper's
    scalar counters (lives, elapsed steps, ...) and the frame-stack contents."""
    chain = _wrappers(env)
    base = chain[-1]
    state: dict[str, Any] = {
        "wrappers": json.dumps([_scalars(w) for w in chain[:-1]]),
        "np_random": json.dumps(base.np_random.bit_generator.state),
    }
    if hasattr(base, "ale"):
        state["ale"] = torch.frombuffer(bytearray(base.ale.cloneState(include_rng=True).serialize()),
                                        dtype=torch.uint8)
    else:  # a pure-Python env (the toy task): its own scalars
        state["base"] = json.dumps(_scalars(base))
    for i, w in enumerate(chain[:-1]):
        for name, value in vars(w).items():
            if isinstance(value, deque):  # FrameStackObservation's frames
                state[f"deque/{i}/{name}"] = torch.as_tensor(np.stack(list(value)))
    return state


def restore_env_state(env, state: dict[str, Any]) -> None:
    import ale_py

    chain = _wrappers(env)
    base = chain[-1]
    for w, scalars in zip(chain[:-1], json.loads(state["wrappers"]), strict=True):
        for k, v in scalars.items():
            setattr(w, k, v)
    base.np_random.bit_generator.state = json.loads(state["np_random"])
    if "ale" in state:
        base.ale.restoreState(ale_py.ALEState(bytes(state["ale"].numpy().tobytes())))
    else:
        for k, v in json.loads(state["base"]).items():
            setattr(base, k, v)
    for key, frames in state.items():
        if key.startswith("deque/"):
            _, i, name = key.split("/", 2)
            queue: deque = getattr(chain[int(i)], name)
            queue.clear()
            queue.extend(frames.numpy())
