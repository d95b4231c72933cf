"""The run record: what a run directory holds, what MLflow is told about a run, and the seed rules.

This is the one owner of the contract between the trainer (`twm`), the suite (`suite`) and the analysis
(`analysis`, which keeps a tested copy of the names it reads, since it must not import `twm`). Torch-free
and MLflow-free, so the suite can plan and inspect 130 runs in milliseconds.

Layout of a run directory (the trainer writes the first group, the suite the second):

  config.json        identity (game, seed, preset, config hash) and the full config, written before any work
  status.json        state, phase, env step, last evaluation, pid/host, MLflow run id (rewritten atomically)
  metrics.jsonl      every metric point, appended here first; MLflow is fed from it (twm.metric_log)
  checkpoints/       ckpt-<n>.pt, atomic and checksummed, the newest `runtime.keep_checkpoints`, and the
                     replay frames they share, append-only (frames-<start>-<stop>.u8, each written once)
  final_scores.json  the final evaluation's episodes and summary
  mlflow_run.json    what MLflow gets besides metrics: store, experiment, run name, tags, params, the run's
                     uid (tag twm.run_uid, found again after any crash) and id, and what was last synced
  mlflow.db, mlartifacts/   the default MLflow store of a run started by hand (`twm-train run`)
  DONE               written last: the run is finished
  FAILED             one line: why the trainer failed
  train.log          the trainer's stdout/stderr when the suite runs it
  .claim.lock        the run lock: flock held by the trainer process for its whole life (RunLock)
  .tracking.lock     flock held by whoever sends this run's record to MLflow (its trainer or `twm-suite sync`)
  claim.json         who holds the run lock (pid, host, Slurm job, since)
  submitted.json     which launch / job submitted the run
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

# ------------------------------------------------------------------------------- file names
CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL_SCORES = "final_scores.json"
MLFLOW_RUN = "mlflow_run.json"
DONE = "DONE"
FAILED = "FAILED"
TRAIN_LOG = "train.log"
LOCK = ".claim.lock"
CLAIM = "claim.json"
SUBMITTED = "submitted.json"
TRACKING_LOCK = ".tracking.lock"
MLFLOW_DB = "mlflow.db"  # the default sqlite store in a run directory or a runs folder
MLFLOW_ARTIFACTS = "mlartifacts"  # the artifacts of a sqlite store, beside its mlflow.db
TEMP_MARK = ".tmp-"  # temp files of atomic writes are named `.<name>.tmp-<pid>`


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / CONFIG)
    status = property(lambda self: self.path / STATUS)
    metrics = property(lambda self: self.path / METRICS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    final_scores = property(lambda self: self.path / FINAL_SCORES)
    mlflow_run = property(lambda self: self.path / MLFLOW_RUN)
    done = property(lambda self: self.path / DONE)
    failed = property(lambda self: self.path / FAILED)
    train_log = property(lambda self: self.path / TRAIN_LOG)
    lock = property(lambda self: self.path / LOCK)
    claim = property(lambda self: self.path / CLAIM)
    submitted = property(lambda self: self.path / SUBMITTED)
    mlflow_db = property(lambda self: self.path / MLFLOW_DB)
    tracking_lock = property(lambda self: self.path / TRACKING_LOCK)


# --------------------------------------------------------------------------------- states
# A run's state as the trainer writes it in status.json and in the MLflow tag `twm.status`.
STATE_RUNNING = "running"
STATE_INTERRUPTED = "interrupted"  # stopped by a signal after a checkpoint; a relaunch resumes it
STATE_FAILED = "failed"  # the trainer failed; FAILED says why
STATE_DONE = "done"  # the final score is logged; the only completion marker
RUN_STATES = (STATE_RUNNING, STATE_INTERRUPTED, STATE_FAILED, STATE_DONE)

# ----------------------------------------------------------------------------- MLflow tags
TAG_STATUS = "twm.status"  # one of RUN_STATES; MLflow's own RUNNING/FAILED status is not a marker
TAG_GAME = "twm.game"
TAG_SEED = "twm.seed"
TAG_PRESET = "twm.preset"
TAG_CONFIG_HASH = "twm.config_hash"
TAG_GRID = "twm.grid"  # suite runs: the grid (== MLflow experiment name)
TAG_VARIANT = "twm.variant"
TAG_RUN_KEY = "twm.run_key"  # grid/variant/game/s<seed>-<hash>
TAG_GIT_COMMIT = "twm.git_commit"
TAG_EXECUTOR = "twm.executor"
TAG_SLURM_JOB_ID = "slurm.job_id"
TAG_RUN_UID = "twm.run_uid"  # made once per run directory: finds the MLflow run again after any crash
# Experiment tags: the experiment kind tells MLflow UIs that these are training runs (runs table) rather than
# GenAI traces; MLflow 3.17's UI also needs `?workflowType=machine_learning` in its link (see ui_link).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"

# -------------------------------------------------------------------------- MLflow metrics
# A metric's step never repeats for its key: per-env-step metrics use the env step at which the value was
# measured; per-update metrics (losses, entropies, grad norms: obs/*, dyn/*, actor/*, critic/*, imag/*,
# perf/*) are means over `runtime.metrics_every` updates, logged with step = the update number.
EVAL_RETURN = "eval/return"  # mean return of an evaluation (every schedule.eval_every env steps)
EVAL_RETURN_STD = "eval/return_std"
EVAL_EPISODES = "eval/episodes"
FINAL_SCORE = "final/score"  # mean over schedule.final_eval_episodes at the end: the reported number
FINAL_SCORE_STD = "final/score_std"
TRAIN_RETURN = "train/return"  # raw return of each finished training game
PERF_ENV_STEPS_PER_S = "perf/env_steps_per_s"
PERF_TRAIN_STEPS_PER_S = "perf/train_steps_per_s"
PROGRESS_ENV_STEP = "progress/env_step"  # step = update number: maps the loss curves onto env steps


# ----------------------------------------------------------------------------- seed rules
MAX_SEED = 2**32 - 1  # a run seed is in 0 .. MAX_SEED (NumPy's global seeding takes no more)


def train_reset_seed(seed: int) -> int:
    """The training env's first reset seed (spec §1): (seed+1)*7979."""
    return (seed + 1) * 7979


def next_reset_seed(reset_seed: int) -> int:
    """The training env's reset seed after every episode end (spec §2.2): s <- 3s + 13."""
    return 3 * reset_seed + 13


def eval_start_seed(seed: int) -> int:
    """The first evaluation round's seed (spec §2.3): (seed+13)*7919+13; sub-env k gets s+k."""
    return (seed + 13) * 7919 + 13


def next_eval_seed(round_seed: int, num_envs: int) -> int:
    """The next evaluation round's seed (spec §2.3): s <- 3s + 13 + num_envs."""
    return round_seed * 3 + 13 + num_envs


# --------------------------------------------------------------------------- atomic writes
def temp_path(path: Path) -> Path:
    """The temp name an atomic write of `path` uses (hidden, with this process's pid)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and TEMP_MARK in path.name


def temp_writer_pid(path: Path) -> int | None:
    """The pid in a temp file's name (None if it has none)."""
    tail = path.name.rpartition(TEMP_MARK)[2]
    return int(tail) if tail.isdigit() else None


def write_atomic(path: Path, write: Callable[[BinaryIO], Any], *, durable: bool = False) -> None:
    """The one atomic writer: `write(file)` fills a temp file that is then renamed over `path`, so readers never
    see half a file; with `durable`, the file and its folder are fsynced so the content survives a power loss.
    On any failure the temp file is removed and the error propagates."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    write_atomic(path, lambda f: f.write(data), durable=durable)


def write_text_atomic(path: Path, text: str, *, durable: bool = False) -> None:
    write_bytes_atomic(path, text.encode(), durable=durable)


def write_json_atomic(path: Path, obj: Any, *, durable: bool = False) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1), durable=durable)


def read_json(path: Path) -> Any:
    """A JSON file's content, or None if it is missing, unreadable or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- locks
class FileLock:
    """An exclusive flock on a file (created if missing): the one lock mechanism of the run record. The kernel
    drops it when the holder exits or is killed; the descriptor is not inherited by children."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path, wait_s: float | None = 0.0) -> FileLock | None:
        """The lock, or None when another process still holds it after `wait_s` seconds (0: do not wait;
        None: wait as long as it takes). OSError where the filesystem has no flock."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                return cls(fd)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return None
                time.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock(FileLock):
    """The run lock: `<run dir>/.claim.lock`, held by the trainer process for its whole life, so no second
    trainer can start on a live run directory, whatever happens to whoever launched it; `claim.json` says who
    holds it."""

    @classmethod
    def acquire(cls, run_dir: Path, wait_s: float = 1.0, *, announce: bool = True) -> RunLock | None:
        """The lock of an existing run directory, or None when a live process holds it. Retries for `wait_s`
        so that a reader's momentary probe (`lock_holder`) is never mistaken for a holder. Without `announce`,
        claim.json is written later by `announce()` (a trainer takes the lock before its last checks and
        writes nothing until they pass)."""
        lock = super().acquire(Path(run_dir) / LOCK, wait_s)
        if lock is not None:
            lock.run_dir = Path(run_dir)
            if announce:
                lock.announce()
        return lock

    def announce(self) -> None:
        """Say who holds the lock (claim.json)."""
        write_json_atomic(self.run_dir / CLAIM, {"pid": os.getpid(), "host": socket.gethostname(),
                                                 "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                                                 "since": time.time()})


def lock_holder(run_dir: Path) -> dict | None:
    """Who holds the run lock (claim.json: pid, host, ...; {} while it is being written), or None when no live
    process holds it. Takes no lock that could outlive the call."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_json(Path(run_dir) / CLAIM) or {}
    except OSError:  # no flock on this filesystem: no trainer can hold the lock there either
        return None
    finally:
        os.close(fd)
    return None
