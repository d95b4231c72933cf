"""What a run directory says about its run: markers written by the trainer, the suite's claim lock and
submission record, and the state the suite derives from them.

The layout and file names are twm.run_record's (the one owner of the run record).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from suite.grids import RunSpec
from twm.run_record import CLAIM, CONFIG, DONE, FAILED, LOCK, STATUS, SUBMITTED, read_json
from twm.run_record import write_json_atomic as write_json

STATES = ("pending", "running", "requeued", "done", "failed", "missing")


class RunClaim:
    """An exclusive flock on `<run_dir>/.claim.lock`, held while a job runs the trainer on that run
    directory, so the same cell never runs twice at once. The kernel drops it when the holder dies."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir = run_dir
        self._fd = fd

    @classmethod
    def acquire(cls, run_dir: Path, job_id: str) -> RunClaim | None:
        """The claim, or None when another process holds it."""
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        write_json(run_dir / CLAIM, {"pid": os.getpid(), "host": socket.gethostname(), "job_id": job_id,
                                     "since": time.time()})
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def is_claimed(run_dir: Path) -> bool:
    """True while some process holds the run's claim lock."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def record_submission(run_dir: Path, job_id: str, executor: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / SUBMITTED, {"job_id": job_id, "executor": executor, "host": socket.gethostname(),
                                     "pid": os.getpid(), "time": time.time()})


@dataclass(frozen=True)
class RunState:
    """One run as `status` shows it."""

    spec: RunSpec
    state: str  # one of STATES
    env_step: int
    total_env_steps: int | None
    last_eval_return: float | None
    eta_s: float | None
    job_id: str | None
    attempt: int | None
    reason: str = ""


def local_launcher_alive(record: dict) -> bool:
    """A local-pool submission is pending while its launcher process is alive on this host."""
    if record.get("executor") != "local" or record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def run_state(spec: RunSpec, runs_dir: Path, queue: dict[str, tuple[str, str]]) -> RunState:
    """Derive a run's state from its directory and the Slurm queue (`{job id: (state, reason)}`)."""
    run_dir = spec.run_dir(runs_dir)
    status = read_json(run_dir / STATUS) or {}
    submitted = read_json(run_dir / SUBMITTED) or {}
    job_id = submitted.get("job_id")
    reason = ""
    if (run_dir / DONE).exists():
        state = "done"
    elif (run_dir / FAILED).exists():
        state = "failed"
        reason = (run_dir / FAILED).read_text().strip().splitlines()[0] if (run_dir / FAILED).stat().st_size else ""
    elif is_claimed(run_dir):
        state = "running"
    elif job_id in queue:
        slurm_state, reason = queue[job_id]
        if slurm_state == "PENDING":
            state = "requeued" if status else "pending"
        else:
            state = "running"
    elif local_launcher_alive(submitted):
        state = "pending"
    elif status.get("state") == "failed":
        state = "failed"
    else:
        state = "missing"
    env_step = int(status.get("env_step") or 0)
    total = status.get("total_env_steps")
    return RunState(spec=spec, state=state, env_step=env_step, total_env_steps=total,
                    last_eval_return=status.get("last_eval_return"), eta_s=_eta(status, state, _prefill(run_dir)),
                    job_id=job_id, attempt=status.get("attempt"), reason=reason)


def _prefill(run_dir: Path) -> int:
    """buffer.prefill of the run (config.json written by the trainer); 0 when unknown."""
    config = (read_json(run_dir / CONFIG) or {}).get("config") or {}
    return int(config.get("buffer.prefill", 0))


def _eta(status: dict, state: str, prefill: int) -> float | None:
    """Seconds left at the run's main-phase rate: env steps collected after the random prefill per second of
    the run's whole wall-clock (pretraining included, so a slight overestimate); unknown before the main phase."""
    if state != "running" or status.get("phase") not in (None, "main"):
        return None
    try:
        done, total = int(status["env_step"]), int(status["total_env_steps"])
        elapsed = float(status.get("wall_s") or float(status["updated"]) - float(status["started"]))
    except (KeyError, TypeError, ValueError):
        return None
    if done <= prefill or elapsed <= 0:
        return None
    return (total - done) * elapsed / (done - prefill)
