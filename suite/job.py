"""One job: run K RunSpecs as `twm-train run` subprocesses sharing the job's GPU.

The same code runs a local pool slot and a Slurm array task. Each trainer runs in its own session, so a
terminal's Ctrl-C or hang-up reaches it only through its launcher, which forwards every stop as SIGTERM (the
trainer checkpoints at its next safe point and exits 3); should the launcher die without forwarding
(`kill -9`), the kernel sends the trainer SIGTERM itself (PR_SET_PDEATHSIG), so no trainer outlives its
launcher unknown. The trainer holds its run directory's lock (twm.run_record.RunLock) for its whole life.

On Slurm, `RunJob` is a submitit Checkpointable: on the time-limit/preemption signal (USR2) `checkpoint()`
asks the trainers to stop, waits until they have written their checkpoints, and returns a slim resubmission
of itself; submitit requeues the job and the trainers resume from their checkpoints into the same MLflow
runs. Exit codes of `twm-train run`: 0 done, 1 failed (FAILED written), 2 bad input, 3 interrupted, 4 busy.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from suite.grids import RunSpec
from twm.run_record import DONE, FAILED, TAG_EXECUTOR, TAG_GIT_COMMIT, TAG_SLURM_JOB_ID, TRAIN_LOG, lock_holder

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_BUSY = 0, 1, 2, 3, 4
POLL_S = 1.0
INTERRUPT_GRACE_S = 60.0  # after a trainer stops on an outside SIGTERM, wait this long for USR2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT)  # faulthandler's
_PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only


@dataclass(frozen=True)
class LaunchContext:
    """What every run of one launch shares."""

    runs_dir: Path
    tracking_uri: str
    experiment: str
    executor: str  # local | slurm | debug
    device: str = "auto"
    git_commit: str = "unknown"
    offline: bool = False  # the trainers keep their MLflow record in the run directory; `sync` merges it


def trainer_executable() -> list[str]:
    """`twm-train` of this environment (next to the interpreter), so jobs need no PATH setup."""
    beside = Path(sys.executable).parent / "twm-train"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("twm-train")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from twm.cli import main; sys.exit(main())"]


def train_command(spec: RunSpec, ctx: LaunchContext, job_id: str) -> list[str]:
    """The exact `twm-train run` command line of one run."""
    cmd = trainer_executable() + [
        "run", "--game", spec.game, "--seed", str(spec.seed), "--preset", spec.preset,
        "--out", str(spec.run_dir(ctx.runs_dir)), "--tracking-uri", ctx.tracking_uri,
        "--experiment", ctx.experiment, "--run-name", spec.run_name, "--device", ctx.device,
    ]
    for key, value in spec.overrides:
        cmd += ["--set", f"{key}={value}"]
    tags = {**spec.tags(), TAG_GIT_COMMIT: ctx.git_commit, TAG_EXECUTOR: ctx.executor}
    if ctx.executor == "slurm":
        tags[TAG_SLURM_JOB_ID] = job_id
    for key, value in tags.items():
        cmd += ["--tag", f"{key}={value}"]
    if ctx.offline:
        cmd.append("--offline")
    return cmd + ["--no-progress"]  # logs go to train.log; the suite shows its own progress


def shell_command(cmd: list[str]) -> str:
    """A command line that bash parses back into exactly `cmd` (for printing)."""
    return shlex.join(cmd)


def _child_setup(launcher_pid: int) -> None:
    """In the trainer child, before exec: SIGTERM when the launcher dies (the trainer then checkpoints and
    stops), and USR2 ignored: Slurm signals every process of the step with it before the time limit, but only
    the job (submitit) should react. Both survive exec."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher_pid:  # the launcher died before the death signal was armed
        os._exit(EXIT_INTERRUPTED)


@dataclass
class TrainerProcess:
    """A running `twm-train run` of one spec."""

    spec: RunSpec
    proc: subprocess.Popen
    started: float
    stop_sent: bool = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Ask the trainer to checkpoint at its next safe point and exit (once)."""
        if not self.stop_sent and self.alive():
            self.proc.send_signal(signal.SIGTERM)
            self.stop_sent = True


def start_trainer(spec: RunSpec, ctx: LaunchContext, job_id: str, env: dict[str, str]) -> TrainerProcess | None:
    """Start the run's trainer in its own session; None when a live trainer already holds the run's lock.
    Two launches racing here start two processes, but the trainer takes the lock itself before it touches
    anything, so the second one exits 4 (busy) at once."""
    run_dir = spec.run_dir(ctx.runs_dir)
    if lock_holder(run_dir) is not None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    launcher_pid = os.getpid()
    with open(run_dir / TRAIN_LOG, "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(train_command(spec, ctx, job_id), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                preexec_fn=lambda: _child_setup(launcher_pid))
    return TrainerProcess(spec=spec, proc=proc, started=time.time())


def finish(trainer: TrainerProcess, ctx: LaunchContext) -> str:
    """The outcome of an exited trainer: done | interrupted | busy | failed. A stop is never a failure, even
    one that came before the trainer could catch it (start-up: killed by SIGTERM, SIGINT or SIGHUP). Other
    deaths and bad-input exits are written to FAILED (one line) so that relaunches do not retry them forever."""
    code = trainer.proc.returncode
    run_dir = trainer.spec.run_dir(ctx.runs_dir)
    if code == EXIT_DONE:
        return "done"
    if code == EXIT_INTERRUPTED or -code in STOP_SIGNALS:
        return "interrupted"
    if code == EXIT_BUSY:
        return "busy"
    if not (run_dir / FAILED).exists():
        if code == EXIT_BAD_INPUT:
            reason = "bad input: " + _last_line(run_dir / TRAIN_LOG)
        elif code < 0:
            reason = f"killed by signal {signal.Signals(-code).name}"
            if -code in CRASH_SIGNALS:  # the trainer's faulthandler wrote where each thread was
                reason += f"; the Python stack of every thread is at the end of {TRAIN_LOG}"
        else:
            reason = f"exit code {code}: " + _last_line(run_dir / TRAIN_LOG)
        (run_dir / FAILED).write_text(reason + "\n")
    return "failed"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no train.log)"
    return lines[-1].strip() if lines else "(empty train.log)"


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP do not end this process: they are recorded, and its loop asks
    the trainers to checkpoint and stop, and waits for them. Main thread only."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: object) -> None:
        self.received.append(signal.Signals(signum).name)


@dataclass
class RunJob(submitit.helpers.Checkpointable):
    """A Slurm/debug job: run `specs` concurrently (K runs per GPU) and report {run key: outcome}."""

    specs: tuple[RunSpec, ...]
    ctx: LaunchContext
    _trainers: list[TrainerProcess] = field(default_factory=list, repr=False)

    def __call__(self) -> dict[str, str]:
        job_id = _job_id()
        on_slurm = "SLURM_JOB_ID" in os.environ  # there submitit owns the signals (USR2 -> checkpoint())
        outcomes: dict[str, str] = {}
        self._trainers = []
        for spec in self.specs:
            if (spec.run_dir(self.ctx.runs_dir) / DONE).exists():
                outcomes[spec.key] = "done"
                continue
            trainer = start_trainer(spec, self.ctx, job_id, dict(os.environ))
            if trainer is None:
                outcomes[spec.key] = "busy"
            else:
                self._trainers.append(trainer)
        with nullcontext() if on_slurm else StopSignals() as stop:
            while any(t.alive() for t in self._trainers):
                if stop is not None and stop.received:
                    for trainer in self._trainers:
                        trainer.stop()
                time.sleep(POLL_S)
        for trainer in self._trainers:
            outcomes[trainer.spec.key] = finish(trainer, self.ctx)
        self._trainers = []
        if "interrupted" in outcomes.values() and on_slurm:
            # A trainer stopped on an outside SIGTERM (preemption): the USR2 that makes submitit requeue
            # usually follows; give it the chance before ending the job.
            time.sleep(INTERRUPT_GRACE_S)
        return outcomes

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """On USR2: ask every trainer to checkpoint and stop, wait for them, resubmit a slim copy."""
        for trainer in self._trainers:
            trainer.stop()
        for trainer in self._trainers:
            trainer.proc.wait()
        return submitit.helpers.DelayedSubmission(RunJob(self.specs, self.ctx))

    def __getstate__(self) -> dict:
        return {"specs": self.specs, "ctx": self.ctx}

    def __setstate__(self, state: dict) -> None:
        self.specs, self.ctx, self._trainers = state["specs"], state["ctx"], []


def _job_id() -> str:
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:
        return f"pid{os.getpid()}"
