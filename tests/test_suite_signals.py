"""The launcher under faults, with real processes: SIGTERM, a closed terminal (SIGHUP), two Ctrl-C and `kill -9`
of a running `twm-suite launch smoke`, then relaunches. Every stop leaves every run interrupted (never failed)
and no trainer behind; no run directory ever has two live trainers (process table and run lock); the last
relaunch resumes every run to the scores of an uninterrupted launch, into the same MLflow runs, with no
(metric, step) logged twice. One grid goes through all the faults in turn, so the runs are trained once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from suite_helpers import sets, wait_for

from suite.grids import get_grid, plan
from suite.launch import LaunchOptions, launch
from suite.status import show
from twm.config import parse_overrides
from twm.run_record import DONE, FAILED, MLFLOW_RUN, STATUS, TRAIN_LOG, lock_holder, read_json

pytestmark = pytest.mark.slow

# A smoke cell whose main phase lasts long enough (about 13 s per run alone on 2 cores) to be stopped four times.
LONG = ["schedule.budget=50000", "schedule.pretrain_budget=3000", "buffer.capacity=1000", "env.time_limit=300",
        "schedule.eval_episodes=1", "schedule.final_eval_episodes=2"]
SELECTION = ["smoke", "--games", "Pong", "--seeds", "0,1", *sets(LONG)]
LAUNCH = [sys.executable, "-m", "suite.cli", "launch", *SELECTION]


PF_EXITING = 0x4  # /proc/<pid>/stat flags: the process is exiting (its files, hence its run lock, released)


def live_trainers(run_dirs: list[Path]) -> dict[str, list[int]]:
    """{run dir: pids} of the live `twm-train run --out <run dir>` processes in the process table: neither a
    zombie nor exiting, and not a trainer's own child between fork and exec (it has its parent's cmdline)."""
    wanted = {str(d) for d in run_dirs}
    candidates: dict[int, tuple[str, int]] = {}  # pid -> (run dir, parent pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in args]
        exiting = stat[0] in ("Z", "X") or int(stat[6]) & PF_EXITING
        if not exiting and "run" in args and "--out" in args and args.index("--out") + 1 < len(args):
            out = args[args.index("--out") + 1]
            if out in wanted and any(a.endswith("twm-train") for a in args):
                candidates[int(entry)] = (out, int(stat[1]))
    found: dict[str, list[int]] = {}
    for pid, (out, parent) in candidates.items():
        if parent not in candidates:
            found.setdefault(out, []).append(pid)
    return found


class TrainerWatch(threading.Thread):
    """Samples the process table every 0.1 s and records every moment with two live trainers on one run dir."""

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__(daemon=True)
        self.run_dirs, self.overlaps, self.samples = run_dirs, [], 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for run_dir, pids in live_trainers(self.run_dirs).items():
                if len(pids) > 1:
                    self.overlaps.append((time.time(), run_dir, pids))
            self.samples += 1
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class Terminal(threading.Thread):
    """The terminal emulator side of a pty: shows (collects) what is written to it; leaving the `with` block
    closes it, as closing a terminal window does (the kernel hangs up the launcher's session)."""

    def __init__(self, master: int) -> None:
        super().__init__(daemon=True)
        self.master, self.shown = master, bytearray()
        self._closing = threading.Event()

    def run(self) -> None:
        while not self._closing.is_set():
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.shown += os.read(self.master, 65536)
                except OSError:
                    return

    def __enter__(self) -> Terminal:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self.join()
        os.close(self.master)


def start_launcher(runs: Path, log: Path, **popen) -> subprocess.Popen:
    """A launcher in its own session, like one started from a shell prompt (its process group gets Ctrl-C)."""
    popen.setdefault("stdout", open(log, "wb"))
    popen.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen([*LAUNCH, "--runs-dir", str(runs)], start_new_session=True, **popen)


def wait_training(run_dirs: list[Path], attempt: int, launcher: subprocess.Popen, log: Path) -> None:
    """Until every run's trainer of this attempt holds its lock and is in the main phase, plus 1 s of training."""
    def training():
        assert launcher.poll() is None, log.read_text(errors="replace")[-3000:]
        for run_dir in run_dirs:
            status = read_json(run_dir / STATUS) or {}
            if (lock_holder(run_dir) is None or status.get("attempt") != attempt or status.get("phase") != "main"
                    or status.get("state") != "running"):
                return False
        return True
    wait_for(training, 180, f"attempt {attempt} of every run to train")
    time.sleep(1.0)
    assert not any((d / DONE).exists() for d in run_dirs), "a run finished before its stop; make LONG longer"


def assert_stopped(launcher: subprocess.Popen, run_dirs: list[Path], runs: Path, log: Path | None) -> None:
    """The launcher exits 3 after its trainers; each run is interrupted in status.json and MLflow, none failed."""
    import mlflow

    code = launcher.wait(timeout=120)
    output = log.read_text(errors="replace") if log else "(the terminal was closed)"
    assert code == 3, output[-3000:]
    assert live_trainers(run_dirs) == {}, "a trainer outlived its launcher"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    for run_dir in run_dirs:
        assert not (run_dir / FAILED).exists(), (run_dir / FAILED).read_text()
        assert lock_holder(run_dir) is None
        assert read_json(run_dir / STATUS)["state"] == "interrupted", (run_dir / TRAIN_LOG).read_text()[-2000:]
        run = client.get_run(read_json(run_dir / MLFLOW_RUN)["run_id"])
        assert run.data.tags["twm.status"] == "interrupted"
    if log:
        (finished,) = [line for line in output.splitlines() if line.startswith("finished: ")]
        assert finished.startswith("finished: stopped by SIG") and finished.endswith("; 2 interrupted"), finished


def test_every_stop_interrupts_and_a_relaunch_resumes_to_the_uninterrupted_scores(tmp_path):
    import mlflow

    runs, reference_runs = tmp_path / "runs", tmp_path / "reference"
    specs = plan(get_grid("smoke"), ("Pong",), (0, 1), overrides=parse_overrides(LONG))
    run_dirs = [spec.run_dir(runs) for spec in specs]
    reference = subprocess.Popen([*LAUNCH, "--runs-dir", str(reference_runs)], stdout=subprocess.DEVNULL,
                                 stderr=open(tmp_path / "reference.log", "wb"), start_new_session=True)
    watch = TrainerWatch(run_dirs)
    watch.start()
    started: list[subprocess.Popen] = [reference]
    try:
        # 1. SIGTERM (`kill <pid>`)
        log = tmp_path / "sigterm.log"
        started.append(launcher := start_launcher(runs, log))
        wait_training(run_dirs, 1, launcher, log)
        launcher.send_signal(signal.SIGTERM)
        assert_stopped(launcher, run_dirs, runs, log)
        table: list[str] = []
        assert show(specs, runs, say=table.append) == 0  # `twm-suite status`: nothing failed
        header, total = table[0].splitlines()[0].split(), table[0].splitlines()[4].split()
        assert total[header.index("interrupted") + 1] == "2", table[0]

        # 2. The launcher's terminal closes (SIGHUP from the kernel; its output then fails with EIO)
        master, terminal = os.openpty()
        started.append(launcher := start_launcher(runs, log, stdin=terminal, stdout=terminal, stderr=terminal,
                                                  preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)))
        os.close(terminal)
        with Terminal(master) as screen:
            wait_training(run_dirs, 2, launcher, log)
        assert b"local pool" in screen.shown
        assert_stopped(launcher, run_dirs, runs, None)

        # 3. Ctrl-C twice: SIGINT to the launcher's foreground process group, as a terminal sends it
        log = tmp_path / "sigint.log"
        started.append(launcher := start_launcher(runs, log))
        wait_training(run_dirs, 3, launcher, log)
        os.killpg(launcher.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(launcher.pid, signal.SIGINT)
        assert_stopped(launcher, run_dirs, runs, log)

        # 4. s0 is resumed by hand with the dry run's first command; a launch waits for it and runs s1;
        #    it is killed with kill -9; a relaunch at once finishes the grid.
        printed: list[str] = []
        assert launch(LaunchOptions(grid="smoke", games=("Pong",), seeds=(0, 1), overrides=parse_overrides(LONG),
                                    runs_dir=runs, dry_run=True), say=printed.append) == 0
        (command,) = [line.removeprefix("first command: ") for line in printed if line.startswith("first command: ")]
        assert f"--out {run_dirs[0]}" in command
        started.append(by_hand := subprocess.Popen(["bash", "-c", command], stdout=open(tmp_path / "hand.log", "wb"),
                                                   stderr=subprocess.STDOUT, start_new_session=True))
        wait_for(lambda: lock_holder(run_dirs[0]) is not None, 60, "the hand-started trainer to hold s0")
        log = tmp_path / "killed.log"
        started.append(launcher := start_launcher(runs, log))
        wait_for(lambda: (read_json(run_dirs[1] / STATUS) or {}).get("attempt") == 4
                 and lock_holder(run_dirs[1]) is not None, 120, "the launch to resume s1")
        assert "waiting for the live trainer of smoke/base/Pong/s0" in log.read_text()
        orphan = lock_holder(run_dirs[1])["pid"]
        launcher.kill()
        launcher.wait()
        log = tmp_path / "relaunch.log"
        started.append(relaunch := start_launcher(runs, log))
        wait_for(lambda: orphan not in live_trainers(run_dirs).get(str(run_dirs[1]), []), 30,
                 "the killed launcher's trainer to checkpoint and stop")
        assert relaunch.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
        assert by_hand.wait(timeout=60) == 0, (tmp_path / "hand.log").read_text()[-2000:]
        assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    finally:
        watch.stop()
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    assert watch.samples > 100 and watch.overlaps == [], watch.overlaps  # never two live trainers on one run
    relaunched = log.read_text()
    assert "finished: 1 done" in relaunched or "finished: 2 done" in relaunched, relaunched
    assert "next:" in relaunched
    assert re.search(r"smoke: env steps: .*/2\.00k \[\d+:\d+<\d+:\d+", relaunched), relaunched  # 2 x 1000, ETA
    assert "twm-suite status smoke" in relaunched and "mlflow ui --backend-store-uri" in relaunched
    s1_log = (run_dirs[1] / TRAIN_LOG).read_text()
    # SIGTERM, SIGHUP, 2x SIGINT (forwarded once), kill -9 (the kernel's SIGTERM, once per thread of the launcher)
    assert s1_log.count("received SIGTERM") >= 4
    assert s1_log.count("rerun the same command to resume") == 4  # each stop checkpointed and exited 3
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    mlflow_runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert len(mlflow_runs) == 2  # every attempt went into its run's one MLflow run
    for spec, run_dir in zip(specs, run_dirs, strict=True):
        expected = json.loads((spec.run_dir(reference_runs) / DONE).read_text())
        got = json.loads((run_dir / DONE).read_text())
        assert got["env_steps"] == expected["env_steps"] == 1000
        assert got["final_score"] == expected["final_score"], (spec.key, got, expected)
        (run,) = [r for r in mlflow_runs if r.data.tags["twm.run_key"] == spec.key]
        assert run.data.tags["twm.status"] == "done"
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (spec.key, key, sorted(steps))


def test_a_stop_while_the_trainers_start_up_is_an_interruption_not_a_failure(tmp_path):
    runs = tmp_path / "runs"
    specs = plan(get_grid("smoke"), ("Pong",), (0, 1), overrides=parse_overrides(LONG))
    log = tmp_path / "launch.log"
    launcher = start_launcher(runs, log)
    try:
        wait_for(lambda: all((s.run_dir(runs) / TRAIN_LOG).exists() for s in specs), 60, "the trainers to start")
        assert not any((s.run_dir(runs) / STATUS).exists() for s in specs), "too late: the trainers already run"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 3, log.read_text()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert live_trainers([s.run_dir(runs) for s in specs]) == {}
    assert "finished: stopped by SIGTERM; 2 interrupted" in log.read_text()
    assert not any((s.run_dir(runs) / FAILED).exists() for s in specs)
    table: list[str] = []
    assert show(specs, runs, say=table.append) == 0  # nothing failed; nothing trained either
