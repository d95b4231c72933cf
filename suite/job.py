"""One job: run K RunSpecs as `twm-train run` subprocesses sharing the job's GPU.

The same code runs a local pool slot and a Slurm array task. On Slurm, `RunJob` is a submitit
Checkpointable: on the time-limit/preemption signal (USR2) `checkpoint()` forwards SIGTERM to the
trainers, waits until they have written their checkpoints (exit 3), and returns a slim resubmission of
itself; submitit requeues the job and the trainers resume from their checkpoints into the same MLflow
runs. Exit codes of `twm-train run`: 0 done, 1 failed (FAILED written), 2 bad input, 3 interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from suite.grids import RunSpec
from suite.rundir import RunClaim
from twm.run_record import DONE, FAILED, TAG_EXECUTOR, TAG_GIT_COMMIT, TAG_SLURM_JOB_ID, TRAIN_LOG

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3
POLL_S = 1.0
INTERRUPT_GRACE_S = 60.0  # after a trainer stops on an outside SIGTERM, wait this long for USR2


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


def _ignore_usr2() -> None:
    """In the trainer child: Slurm signals every process of the step with USR2 before the time limit;
    only the job (submitit) should react to it. An ignored disposition survives exec."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclass
class RunningTrainer:
    spec: RunSpec
    proc: subprocess.Popen
    claim: RunClaim
    started: float


def start_run(spec: RunSpec, ctx: LaunchContext, job_id: str, env: dict[str, str]) -> RunningTrainer | None:
    """Claim the run directory and start its trainer; None when another job holds the claim."""
    run_dir = spec.run_dir(ctx.runs_dir)
    claim = RunClaim.acquire(run_dir, job_id)
    if claim is None:
        return None
    try:
        with open(run_dir / TRAIN_LOG, "ab") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(train_command(spec, ctx, job_id), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, preexec_fn=_ignore_usr2)
    except OSError:
        claim.release()
        raise
    return RunningTrainer(spec=spec, proc=proc, claim=claim, started=time.time())


def finish_run(running: RunningTrainer, ctx: LaunchContext) -> str:
    """Release the claim and turn the trainer's exit code into an outcome; a bad-input exit or a death
    by signal is written to FAILED (one line) so that relaunches do not retry it forever."""
    code = running.proc.returncode
    running.claim.release()
    run_dir = running.spec.run_dir(ctx.runs_dir)
    if code == EXIT_DONE:
        return "done"
    if code == EXIT_INTERRUPTED:
        return "interrupted"
    if not (run_dir / FAILED).exists():
        if code == EXIT_BAD_INPUT:
            reason = "bad input: " + _last_line(run_dir / TRAIN_LOG)
        elif code < 0:
            reason = f"killed by signal {signal.Signals(-code).name}"
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


@dataclass
class RunJob(submitit.helpers.Checkpointable):
    """A Slurm/debug job: run `specs` concurrently (K runs per GPU) and report {run key: outcome}."""

    specs: tuple[RunSpec, ...]
    ctx: LaunchContext
    _running: list[RunningTrainer] = field(default_factory=list, repr=False)

    def __call__(self) -> dict[str, str]:
        job_id = _job_id()
        outcomes: dict[str, str] = {}
        self._running = []
        for spec in self.specs:
            if (spec.run_dir(self.ctx.runs_dir) / DONE).exists():
                outcomes[spec.key] = "done"
                continue
            running = start_run(spec, self.ctx, job_id, dict(os.environ))
            if running is None:
                outcomes[spec.key] = "busy"
            else:
                self._running.append(running)
        while any(r.proc.poll() is None for r in self._running):
            time.sleep(POLL_S)
        for running in self._running:
            outcomes[running.spec.key] = finish_run(running, self.ctx)
        self._running = []
        if "interrupted" in outcomes.values() and os.environ.get("SLURM_JOB_ID"):
            # A trainer stopped on an outside SIGTERM (preemption): the USR2 that makes submitit requeue
            # usually follows; give it the chance before ending the job.
            time.sleep(INTERRUPT_GRACE_S)
        return outcomes

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """On USR2: ask every trainer to checkpoint (SIGTERM), wait for them, resubmit a slim copy."""
        for running in self._running:
            if running.proc.poll() is None:
                running.proc.send_signal(signal.SIGTERM)
        for running in self._running:
            while running.proc.poll() is None:
                time.sleep(0.2)
            running.claim.release()
        return submitit.helpers.DelayedSubmission(RunJob(self.specs, self.ctx))

    def __getstate__(self) -> dict:
        return {"specs": self.specs, "ctx": self.ctx}

    def __setstate__(self, state: dict) -> None:
        self.specs, self.ctx, self._running = state["specs"], state["ctx"], []


def _job_id() -> str:
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:
        return f"pid{os.getpid()}"
