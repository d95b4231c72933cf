"""The embedded default executor: a bounded pool of at most N trainer subprocesses on this machine,
GPUs given round-robin through CUDA_VISIBLE_DEVICES. No cluster needed.

(submitit's LocalExecutor starts every job at once and pins all of them to GPU 0, so it is not used.)

The pool owns its trainers: SIGINT, SIGTERM and SIGHUP to the launcher make it ask every trainer to
checkpoint and stop, start no new one, and wait until all have exited; the trainers run in their own sessions,
so a terminal reaches them only through the launcher, and they get SIGTERM from the kernel should the launcher
die without forwarding. A run whose lock a live trainer holds (e.g. the orphan of a killed launcher, still
writing its checkpoint) is started once that trainer has gone. Progress is the grid's env steps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from suite.grids import RunSpec
from suite.job import EXIT_BUSY, POLL_S, LaunchContext, StopSignals, TrainerProcess, finish, start_trainer
from suite.status import env_steps_done, total_env_steps
from twm.run_record import DONE, lock_holder


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def default_parallel(gpus: list[str], runs_per_gpu: int) -> int:
    """K runs per GPU with GPUs; on CPU half the cores (at least 2 where there are 2 cores, at most 8)."""
    if gpus:
        return len(gpus) * runs_per_gpu
    cores = os.cpu_count() or 1
    return min(cores, max(2, cores // 2), 8)


class QuietStream:
    """A text stream whose writes never raise: a closed terminal (SIGHUP, then EIO) or a closed pipe (EPIPE)
    must not stop a launcher that has trainers to look after. Once broken, the file descriptor is pointed at
    /dev/null so that the interpreter's last flush is quiet too."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                self._silence()
        return len(text)

    def flush(self) -> None:
        self.write("")

    def _silence(self) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def say(self, line: str) -> None:
        self.write(line + "\n")


class GridProgress:
    """A progress bar of the grid's env steps (from every run's status.json) out of its total, with an ETA."""

    def __init__(self, specs: list[RunSpec], runs_dir: Path, grid: str) -> None:
        self.specs, self.runs_dir = specs, runs_dir
        tqdm.monitor_interval = 0  # no monitor thread: trainers are forked from this process
        self.bar = tqdm(total=sum(total_env_steps(s) for s in specs), initial=env_steps_done(specs, runs_dir),
                        desc=f"{grid}: env steps", unit="step", unit_scale=True, smoothing=0, dynamic_ncols=True,
                        file=QuietStream(sys.stderr), mininterval=1.0)

    def update(self, postfix: str = "") -> None:
        self.bar.update(env_steps_done(self.specs, self.runs_dir) - self.bar.n)
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)

    def write(self, line: str) -> None:
        self.bar.write(line, file=self.bar.fp)

    def __enter__(self) -> GridProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


@dataclass
class PoolResult:
    outcomes: dict[str, str]  # run key -> done | interrupted | failed | busy | not started
    stopped_by: str | None  # the first stop signal the launcher received


def run_pool(specs: list[RunSpec], ctx: LaunchContext, parallel: int, gpus: list[str]) -> PoolResult:
    """Run every spec, at most `parallel` at a time; blocks until all have ended or, after a stop signal, until
    every running trainer has checkpointed and exited. Messages go above the progress bar (stderr)."""
    base_env = dict(os.environ)
    if not gpus:
        base_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    job_id = f"local{os.getpid()}"
    todo = list(specs)
    slots: dict[int, TrainerProcess] = {}
    outcomes: dict[str, str] = {}
    waiting_for: set[str] = set()
    reported_signals = 0
    with StopSignals() as stop, GridProgress(specs, ctx.runs_dir, ctx.experiment) as progress:
        while todo or slots:
            if len(stop.received) > reported_signals:
                reported_signals = len(stop.received)
                for trainer in slots.values():
                    trainer.stop()
                pids = ", ".join(str(t.proc.pid) for t in slots.values()) or "none"
                progress.write(f"{stop.received[-1]}: asking {len(slots)} trainer(s) to checkpoint and stop; "
                               f"waiting for them (pids {pids}); {len(todo)} run(s) not started")
                for spec in todo:
                    outcomes[spec.key] = "not started"
                todo = []
            for slot in range(parallel):
                if slot in slots:
                    continue
                spec = _next_startable(todo, ctx, waiting_for, progress)
                if spec is None:
                    break
                if (spec.run_dir(ctx.runs_dir) / DONE).exists():  # finished by the trainer we waited for
                    outcomes[spec.key] = "done"
                    continue
                env = dict(base_env)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                trainer = start_trainer(spec, ctx, job_id, env)
                if trainer is None:  # taken by another trainer since _next_startable looked
                    todo.append(spec)
                    continue
                slots[slot] = trainer
            time.sleep(POLL_S)
            for slot, trainer in list(slots.items()):
                if trainer.alive():
                    continue
                del slots[slot]
                if trainer.proc.returncode == EXIT_BUSY and not stop.received:
                    todo.append(trainer.spec)  # another trainer won the lock: wait for it, then resume
                    continue
                outcomes[trainer.spec.key] = finish(trainer, ctx)
            progress.update(_summary(outcomes, slots, todo))
    return PoolResult(outcomes=outcomes, stopped_by=stop.received[0] if stop.received else None)


def _next_startable(todo: list[RunSpec], ctx: LaunchContext, waiting_for: set[str],
                    progress: GridProgress) -> RunSpec | None:
    """Pop the first run no live trainer holds (saying once which ones are waited for); None if there is none."""
    for i, spec in enumerate(todo):
        run_dir = spec.run_dir(ctx.runs_dir)
        holder = lock_holder(run_dir)
        if holder is None:
            return todo.pop(i)
        if spec.key not in waiting_for and not (run_dir / DONE).exists():
            waiting_for.add(spec.key)
            progress.write(f"waiting for the live trainer of {spec.key} (pid {holder.get('pid', '?')} on "
                           f"{holder.get('host', '?')}) before resuming it")
    return None


def _summary(outcomes: dict[str, str], slots: dict[int, TrainerProcess], todo: list[RunSpec]) -> str:
    counts = {"running": len(slots), "queued": len(todo)}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return " ".join(f"{k}={v}" for k, v in counts.items() if v)
