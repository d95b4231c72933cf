"""What a run directory says about its run: markers written by the trainer, the trainer's run lock, the
suite's submission record, and the state the suite derives from them.

The layout, file names and the lock are twm.run_record's (the one owner of the run record).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from suite.grids import RunSpec
from twm.run_record import (
    CHECKPOINTS,
    CONFIG,
    DONE,
    FAILED,
    STATE_FAILED,
    STATE_INTERRUPTED,
    STATUS,
    SUBMITTED,
    lock_holder,
    read_json,
)
from twm.run_record import write_json_atomic as write_json

# not-started: nothing ran yet; pending: queued (Slurm, or a live local launch), never started; running: a live
# trainer holds the run lock; requeued: back in the Slurm queue after a checkpoint; interrupted: stopped (after
# a checkpoint, or killed), a relaunch resumes it; failed: FAILED written (--retry-failed); done: DONE written.
STATES = ("not-started", "pending", "running", "requeued", "interrupted", "failed", "done")
UNKNOWN = "unknown"  # a Slurm run whose job could not be looked up (squeue failed)


def record_submission(run_dir: Path, job_id: str, executor: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / SUBMITTED, {"job_id": job_id, "executor": executor, "host": socket.gethostname(),
                                     "pid": os.getpid(), "time": time.time()})


@dataclass(frozen=True)
class RunState:
    """One run as `status` shows it."""

    spec: RunSpec
    state: str  # one of STATES, or UNKNOWN
    env_step: int
    total_env_steps: int | None
    last_eval_return: float | None
    eta_s: float | None
    job_id: str | None
    attempt: int | None
    reason: str = ""
    tracking_warning: str = ""  # the trainer's sender cannot reach MLflow (status.json's `tracking`)


def local_launcher_alive(record: dict) -> bool:
    """A local-pool submission is pending while its launcher process is alive on this host."""
    if record.get("executor") != "local" or record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def run_state(spec: RunSpec, runs_dir: Path, queue: dict[str, tuple[str, str]] | None) -> RunState:
    """Derive a run's state from its directory, its lock and the Slurm queue (`{job id: (state, reason)}`;
    None when the queue could not be read)."""
    run_dir = spec.run_dir(runs_dir)
    status = read_json(run_dir / STATUS) or {}
    submitted = read_json(run_dir / SUBMITTED) or {}
    job_id = submitted.get("job_id")
    on_slurm = submitted.get("executor") == "slurm"
    holder = lock_holder(run_dir)
    reason = ""
    if (run_dir / DONE).exists():
        state = "done"
    elif (run_dir / FAILED).exists() or status.get("state") == STATE_FAILED:
        state = "failed"
        reason = _first_line(run_dir / FAILED)
    elif holder is not None:
        state = "running"
        reason = f"trainer pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    elif on_slurm and queue is None:
        state, reason = UNKNOWN, f"job {job_id}: the Slurm queue could not be read"
    elif on_slurm and job_id in queue:
        slurm_state, reason = queue[job_id]
        state = ("requeued" if status else "pending") if slurm_state == "PENDING" else "running"
    elif local_launcher_alive(submitted) and float(status.get("updated", 0)) < float(submitted.get("time", 0)):
        state = "pending"
    elif status or any((run_dir / CHECKPOINTS).glob("*")):
        state = "interrupted"
        reason = (f"stopped after a checkpoint at env step {status.get('env_step', '?')}"
                  if status.get("state") == STATE_INTERRUPTED else
                  "its trainer is gone without a final checkpoint (killed?); resumes from its last checkpoint")
    else:
        state = "not-started"
        if on_slurm:
            reason = f"job {job_id} is no longer queued and never started the run; see its log"
    env_step = int(status.get("env_step") or 0)
    total = status.get("total_env_steps")
    return RunState(spec=spec, state=state, env_step=env_step, total_env_steps=total,
                    last_eval_return=status.get("last_eval_return"), eta_s=_eta(status, state, _prefill(run_dir)),
                    job_id=job_id, attempt=status.get("attempt"), reason=reason,
                    tracking_warning=(status.get("tracking") or {}).get("warning", "") if state == "running" else "")


def _first_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[0] if lines else ""


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
