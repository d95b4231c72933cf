"""Atomic, checksummed, safe-to-load checkpoints of everything a run needs to continue exactly.

A checkpoint is one `torch.save` file (models, optimizers, RNG and emulator states, the run's scalars and the
replay buffer's small arrays) written to a temporary name, fsynced and renamed, so a crash mid-write never
leaves a half file under a checkpoint's name. The replay frames (1.6 GB at 100K interactions) are not in it:
the buffer appends each frame once to frame files beside it (twm/replay.py) that later checkpoints share.
Every tensor and value of the payload has a SHA-256 checksum, verified at load, so a corrupt checkpoint is
found and the previous good one used, never silently trained on. Loading uses `weights_only=True`: only
tensors and plain containers are ever unpickled (RNG and emulator states are converted to tensors and
strings). A write that fails (full disk, quota, I/O error) leaves no temp file and says what it was writing
and how much space that needs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from twm.config import Config, ConfigError
from twm.run_record import CHECKPOINTS, TEMP_MARK, is_temp, temp_writer_pid, write_atomic

FORMAT = 2  # 1: the whole replay buffer inside, no checksums
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
CORRUPT_SUFFIX = ".corrupt"  # a corrupt checkpoint set aside by the trainer: ckpt-<n>.pt.corrupt
_NUMBERED = re.compile(r"^ckpt-(\d{9})\.pt(\.corrupt)?$")
RESERVE_BYTES = 1 << 20  # left free by a checkpoint, for status.json, FAILED and the tracking store
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (one-line message naming the file)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose content does not match its checksums, or that does not load at all."""


class IdentityError(CheckpointError):
    """A good checkpoint of another game, seed or configuration than the run that would use it."""


class StorageError(RuntimeError):
    """A checkpoint could not be written (full disk, quota, I/O error): one line naming what was being
    written, where, and for a full disk how much space it needs."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (ordered by their sequence number)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def next_checkpoint_path(run_dir: Path) -> Path:
    """The name of the next checkpoint: numbered after every checkpoint so far, set-aside ones included."""
    folder = checkpoint_dir(run_dir)
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    numbers = [int(m.group(1)) for name in names if (m := _NUMBERED.match(name))]
    return folder / f"ckpt-{max(numbers, default=0) + 1:09d}.pt"


# ---------------------------------------------------------------------------------- checksums
def payload_checksums(payload: Any) -> dict[str, str]:
    """SHA-256 of every leaf of a payload, keyed by its path (`agent/obs_model.encoder.0.weight`): tensors by
    dtype, shape and bytes (hashed in place, one tensor at a time), other values by type and repr."""
    out: dict[str, str] = {}

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{path}/{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                walk(value, f"{path}/{i}")
        else:
            out[path.lstrip("/")] = _digest(obj)

    walk(payload, "")
    return out


def _digest(value: Any) -> str:
    h = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        t = value.detach()
        h.update(f"tensor {t.dtype} {tuple(t.shape)} ".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    else:
        h.update(f"{type(value).__name__} {value!r}".encode())
    return h.hexdigest()


def payload_nbytes(payload: Any) -> int:
    """Bytes `torch.save` writes for a payload's tensors (each storage once), plus room for the rest."""
    storages = {}

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)
        elif isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[(storage.device, storage.data_ptr())] = storage.nbytes()

    walk(payload)
    return sum(storages.values()) + (64 << 10)


# ------------------------------------------------------------------------------ storage faults
def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def free_bytes(folder: Path) -> int:
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def storage_error(what: str, folder: Path, needed: int | None, err: OSError | None = None) -> StorageError:
    """The one-line error of a write that failed (`err`) or would not fit (`err` None: the reserve counts)."""
    if err is None or err.errno in (errno.ENOSPC, errno.EDQUOT):
        reserve = f" plus {_mb(RESERVE_BYTES)} kept free for the run's status files" if err is None else ""
        needs = f"it needs {_mb(needed)}{reserve}, " if needed is not None else ""
        return StorageError(f"no space left on the device of {folder} for {what}: {needs}"
                            f"{_mb(free_bytes(folder))} are free; free some space and rerun the same command "
                            "to resume from the last good checkpoint")
    return StorageError(f"cannot write {what} in {folder}: {err.strerror or err}")


def as_storage_error(err: BaseException) -> StorageError | None:
    """A storage fault as a StorageError: itself, or the OSError of a full disk, a quota or an I/O error
    that some other write met (status.json, ...); None for anything else."""
    if isinstance(err, StorageError):
        return err
    if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
        path = Path(err.filename) if err.filename else Path.cwd() / "?"
        name = path.name[1:].partition(TEMP_MARK)[0] if is_temp(path) else path.name  # the file it stands for
        return storage_error(name, path.parent, None, err)
    return None


def ensure_space(folder: Path, needed: int, what: str) -> None:
    """StorageError before writing anything when `needed` bytes (and a small reserve) do not fit."""
    if free_bytes(folder) < needed + RESERVE_BYTES:
        raise storage_error(what, folder, needed)


class _Recording(io.RawIOBase):
    """A file wrapper that keeps the OSError of a failed write: torch.save would turn it into
    `unexpected pos ...`."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise


def write_file_atomic(path: Path, write: Callable[[BinaryIO], Any], needed: int, what: str) -> None:
    """Write a file through a temp name, fsync and rename it; on any failure the temp file is removed, and a
    storage fault becomes a StorageError naming `what` and the `needed` bytes."""
    ensure_space(path.parent, needed, what)
    recorder: _Recording | None = None

    def recorded(f: BinaryIO) -> None:
        nonlocal recorder
        recorder = _Recording(f)
        write(recorder)

    try:
        write_atomic(path, recorded, durable=True)
    except BaseException as err:
        cause = err if isinstance(err, OSError) else recorder.error if recorder else None
        if cause is not None:
            raise storage_error(what, path.parent, needed, cause) from None
        raise


# ------------------------------------------------------------------------------- save and load
def save_checkpoint(run_dir: Path, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write `payload` with its checksums atomically as the next checkpoint; then delete all but the
    newest `keep`. StorageError (and no new file) when it does not fit or the write fails."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = next_checkpoint_path(run_dir)
    record = {"format": FORMAT, "checksums": payload_checksums(payload), "payload": payload}
    write_file_atomic(path, lambda f: torch.save(record, f), payload_nbytes(payload), f"checkpoint {path.name}")
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint file without unpickling arbitrary objects and verify every checksum of its
    payload; CorruptCheckpointError names the file and the first damaged entry."""
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad magic, disallowed global, ...
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: "
                                     f"{str(err).splitlines()[0][:120]})") from None
    if not isinstance(record, dict) or "format" not in record:
        raise CorruptCheckpointError(f"checkpoint {path} is not a twm checkpoint")
    if record["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {record['format']}; this version reads format "
                              f"{FORMAT} (checksummed, replay frames beside it)")
    try:
        expected, actual = dict(record["checksums"]), payload_checksums(record["payload"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt ({type(err).__name__}: {err})") from None
    bad = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: checksum mismatch in {bad[0]}{more}")
    return record["payload"]


def load_newest(run_dir: Path, accept: Callable[[Path, dict], None] | None = None,
                map_location: str | torch.device = "cpu"
                ) -> tuple[Path, dict[str, Any], list[tuple[Path, CheckpointError]]] | None:
    """The newest checkpoint that loads, verifies and that `accept` takes (it may raise
    CorruptCheckpointError too), with the corrupt newer ones skipped on the way; None when the run has no
    checkpoint, CheckpointError when none is good. IdentityError from `accept` is not skipped."""
    checkpoints = list_checkpoints(run_dir)
    skipped: list[tuple[Path, CheckpointError]] = []
    for path in reversed(checkpoints):
        try:
            payload = load_checkpoint(path, map_location)
            if accept is not None:
                accept(path, payload)
        except CorruptCheckpointError as err:
            skipped.append((path, err))
            continue
        return path, payload, skipped
    if not checkpoints:
        return None
    reasons = "; ".join(str(err) for _, err in skipped)
    raise CheckpointError(f"no good checkpoint in {checkpoint_dir(run_dir)} ({reasons}); move the folder away "
                          "to start the run over")


def set_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint out of the way (kept for inspection, never loaded or pruned)."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    os.replace(path, target)
    return target


def check_identity(path: Path, payload: dict[str, Any], game: str | None = None, seed: int | None = None,
                   config: Config | None = None) -> None:
    """IdentityError unless the checkpoint is of this game, seed and configuration (None: not checked)."""
    problems = []
    if game is not None and payload["game"] != game:
        problems.append(f"game {payload['game']}, not {game}")
    if seed is not None and int(payload["seed"]) != seed:
        problems.append(f"seed {payload['seed']}, not {seed}")
    if config is not None:
        try:
            theirs = Config.from_json(payload["config"])
        except ConfigError as err:
            raise IdentityError(f"checkpoint {path} has a configuration this version rejects: {err}") from None
        if theirs.hash() != config.hash():
            diff = [f"{key} {mine} here, {other} there" for key, mine, other in config.differences(theirs)]
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            problems.append(f"config {theirs.hash()}, not {config.hash()}: {'; '.join(diff[:3])}{more}")
    if problems:
        raise IdentityError(f"checkpoint {path} is of another run ({', '.join(problems)}); refusing to use it")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files that killed writes left in the run directory and its checkpoints (a live
    process's own temp files on this host are kept)."""
    removed = []
    for folder in (Path(run_dir), checkpoint_dir(run_dir)):
        for path in folder.iterdir() if folder.is_dir() else ():
            if is_temp(path) and not _alive(temp_writer_pid(path)):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _alive(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
