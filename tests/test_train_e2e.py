"""End to end on a real ALE game with the smoke preset: a whole run, the analysis reading it, resume after
SIGKILLs in every phase and after SIGTERM, a tracking server frozen and killed mid-run, and non-finite losses
(bad input, identity, corrupt checkpoints and full disks: tests/test_run_integrity.py)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from servers import MlflowServer

from twm.metric_log import read_points

GAME = "Breakout"
# the smoke preset with a smaller main-loop budget (214 train steps): the same code path, faster;
# losses logged every 20 updates (about 40 points per loss key)
FAST = ["--set", "runtime.checkpoint_interval_s=2", "--set", "runtime.eval_envs=2", "--set", "schedule.budget=40000",
        "--set", "runtime.metrics_every=20"]
UNBUFFERED = dict(os.environ, PYTHONUNBUFFERED="1")


def twm_train(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def start_run(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "twm.cli", "run", "--game", GAME, "--seed", "3", "--preset", "smoke",
           "--out", str(out), "--no-progress", *FAST, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=UNBUFFERED)


def run_args(out: Path, *extra: str) -> list[str]:
    return ["run", "--game", GAME, "--seed", "3", "--preset", "smoke", "--out", str(out), "--no-progress",
            *FAST, *extra]


def wait_for_phase(out: Path, proc: subprocess.Popen, phases: set[str], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"run ended early:\n{proc.stdout.read()}"
        status_file = out / "status.json"
        if status_file.exists():
            try:
                status = json.loads(status_file.read_text())
            except json.JSONDecodeError:
                status = {}
            if status.get("phase") in phases and list((out / "checkpoints").glob("ckpt-*.pt")):
                return status
        time.sleep(0.5)
    raise AssertionError(f"run did not reach {phases} in {timeout}s")


def mlflow_runs(out: Path, uri: str | None = None, experiment: str = "twm"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or f"sqlite:///{out / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id])


def history(out: Path, uri: str | None = None, experiment: str = "twm") -> Counter:
    """How often each (key, step) is in the run's MLflow history."""
    client, (run,) = mlflow_runs(out, uri, experiment)
    return Counter((key, m.step) for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key))


def local_points(out: Path) -> Counter:
    """How often each (key, step) is in the run's local metric log."""
    return Counter(p.ident for p in read_points(out / "metrics.jsonl")[0])


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One uninterrupted smoke run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("run") / "breakout-s3"
    result = twm_train(*run_args(out))
    assert result.returncode == 0, result.stdout + result.stderr
    (out.parent / "stdout.log").write_text(result.stdout)
    return out


@pytest.mark.slow
def test_smoke_run_finishes_with_final_evaluation_in_mlflow(finished_run):
    done = json.loads((finished_run / "DONE").read_text())
    assert done["episodes"] == 4 and done["env_steps"] == 1_500
    status = json.loads((finished_run / "status.json").read_text())
    assert status["state"] == "done" and status["env_step"] == 1_500
    client, runs = mlflow_runs(finished_run)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["twm.status"] == "done" and run.data.tags["twm.game"] == GAME
    assert run.data.metrics["final/score"] == pytest.approx(done["final_score"])
    assert run.data.params["buffer.capacity"] == "1500"
    evals = client.get_metric_history(run.info.run_id, "eval/return")
    assert [m.step for m in evals] == [500, 1000, 1500]  # after pretraining, then every 500, then final
    counts = history(finished_run)
    assert max(counts.values()) == 1 and ("obs/loss", 20) in counts and ("final/score", 1500) in counts
    assert status["tracking"]["state"] == "ok" and status["tracking"]["complete"] is True
    artifacts = finished_run / "mlartifacts" / run.info.run_id / "artifacts"
    assert json.loads((artifacts / "final_scores.json").read_text())["final_score"] == done["final_score"]
    # a second invocation on a finished run does nothing
    again = twm_train(*run_args(finished_run))
    assert again.returncode == 0 and "already done" in again.stdout


@pytest.mark.slow
def test_analysis_load_experiment_reads_a_real_smoke_run(finished_run):
    from analysis.scores import load_experiment

    experiment = load_experiment("twm", f"sqlite:///{finished_run / 'mlflow.db'}")
    final = json.loads((finished_run / "final_scores.json").read_text())
    tidy = experiment.tidy
    assert list(tidy["env_step"]) == [500, 1000, 1500] and experiment.partial.empty
    assert (tidy["game"] == GAME).all() and (tidy["seed"] == 3).all() and (tidy["variant"] == "base").all()
    assert list(tidy["score"]) == [step_mean[1] for step_mean in final["evals"]]
    assert tidy["score"].iloc[-1] == final["final_score"]  # final/score at the last env step
    assert experiment.runs.iloc[0]["status"] == "done"


class Watched:
    """A trainer whose output lines are read as they come by a thread."""

    def __init__(self, out: Path):
        self.proc = start_run(out)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=30)

    def finish(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    def checkpoints(self) -> list[tuple[int, str]]:
        """(env step, phase) of every checkpoint this attempt wrote."""
        return [(int(m[1]), m[2]) for line in list(self.lines)
                if (m := re.search(r"checkpoint ckpt-\d+\.pt at env step (\d+) \((\w+)\)", line))]


class Delayed:
    """A kill trigger that fires a random moment (up to `delay` s) after its condition first held."""

    def __init__(self, condition, delay: float):
        self.condition, self.delay, self.since = condition, random.uniform(0, delay), None

    def __call__(self, w: Watched, out: Path) -> bool:
        if self.since is None and self.condition(w, out):
            self.since = time.monotonic()
        return self.since is not None and time.monotonic() - self.since >= self.delay


def _in_prefill(w: Watched, out: Path) -> bool:  # points logged (games ended), no checkpoint yet
    return (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0 and not list(
        (out / "checkpoints").glob("ckpt-*.pt"))


def _mid_pretraining(w: Watched, out: Path) -> bool:  # a checkpoint inside a pretraining phase, not its first
    phases = [phase for _, phase in w.checkpoints()]
    return bool(phases) and phases[-1].startswith("pretrain") and phases.count(phases[-1]) >= 2


def _writing_checkpoint(w: Watched, out: Path) -> bool:
    return (out / "checkpoints").is_dir() and any(".tmp-" in name for name in os.listdir(out / "checkpoints"))


def _main_loop(w: Watched, out: Path) -> bool:
    return any(phase == "main" and 500 < step < 1000 for step, phase in w.checkpoints())


def _evaluating(w: Watched, out: Path) -> bool:  # the checkpoint written right before an evaluation
    return any((step, phase) in ((1000, "main"), (1500, "final")) for step, phase in w.checkpoints())


def _evaluation_killed(w: Watched, out: Path) -> bool:
    step = w.checkpoints()[-1][0]
    return step in (1000, 1500) and not any(f"eval at {step}:" in line for line in w.lines)


# (name, trigger, what must hold after the kill for it to count as that kind of kill)
KILLS = [
    ("prefill", lambda: _in_prefill, lambda w, out: not list((out / "checkpoints").glob("ckpt-*.pt"))),
    ("pretraining", lambda: Delayed(_mid_pretraining, 0.8), _mid_pretraining),
    ("checkpoint write", lambda: _writing_checkpoint, lambda w, out: bool(temp_files(out / "checkpoints"))),
    ("main loop", lambda: Delayed(_main_loop, 1.0),
     lambda w, out: w.checkpoints()[-1][1] == "main" and 500 < w.checkpoints()[-1][0] < 1000),
    ("evaluation", lambda: _evaluating, _evaluation_killed),
]


@pytest.mark.slow
def test_sigkill_in_every_phase_then_resume_gives_the_uninterrupted_scores_and_mlflow_history(tmp_path, finished_run):
    out = tmp_path / "killed"
    attempts: list[Watched] = []
    for name, make_trigger, confirmed in KILLS:
        for _ in range(3):  # a kill that lands a moment too late counts, but the kind is tried again
            trigger, watched = make_trigger(), Watched(out)
            attempts.append(watched)
            deadline = time.monotonic() + 300
            while not trigger(watched, out):
                assert watched.proc.poll() is None, f"the run ended before the {name} kill: " + "\n".join(watched.lines)
                assert time.monotonic() < deadline, f"no {name} kill point in 300 s"
                time.sleep(0.002)
            watched.kill()
            if confirmed(watched, out):
                break
        else:
            raise AssertionError(f"could not kill the run during {name} in 3 tries")
    final = Watched(out)
    assert final.finish() == 0, "\n".join(final.lines)
    assert len(attempts) >= 5
    resumes = [line for w in attempts[1:] + [final] for line in w.lines if "resumed from checkpoint" in line]
    assert any("(pretrain_" in line for line in resumes) and any("(main," in line for line in resumes), resumes

    reference = json.loads((finished_run / "final_scores.json").read_text())
    resumed = json.loads((out / "final_scores.json").read_text())
    assert resumed["episodes"] == reference["episodes"] and resumed["final_score"] == reference["final_score"]
    assert resumed["train_steps"] == reference["train_steps"] and resumed["evals"] == reference["evals"]
    expected = history(finished_run)
    assert max(expected.values()) == 1
    assert history(out) == expected  # the same (key, step) set, each exactly once
    assert local_points(out) == local_points(finished_run)  # the log was cut back at every resume
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    assert not temp_files(out), temp_files(out)


def update_gaps(log: str) -> list[int]:
    """Seconds between consecutive main-loop progress lines ("[HH:MM:SS] update N (main): ...")."""
    stamps = [sum(int(x) * f for x, f in zip(m[1].split(":"), (3600, 60, 1), strict=True))
              for m in re.finditer(r"^\[(\d\d:\d\d:\d\d)\] update \d+ \(main\)", log, re.M)]
    return [(b - a) % 86400 for a, b in zip(stamps, stamps[1:], strict=False)]


@pytest.mark.slow
def test_a_frozen_then_killed_tracking_server_never_stalls_or_fails_the_run_and_sync_fills_its_history(
        tmp_path, finished_run):
    server = MlflowServer(tmp_path / "server").start()
    runs = tmp_path / "runs"
    launch = subprocess.Popen([sys.executable, "-m", "suite.cli", "launch", "smoke", "--games", GAME, "--seeds", "3",
                               "--runs-dir", str(runs), "--tracking-uri", server.uri, *FAST,
                               "--set", "runtime.tracking_close_s=3"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=UNBUFFERED)
    try:
        deadline = time.monotonic() + 300
        while True:
            status = {}
            for found in runs.glob(f"smoke/base/{GAME}/s3-*/status.json"):
                run_dir, status = found.parent, json.loads(found.read_text() or "{}")
            if status.get("phase") == "main" and (status.get("tracking") or {}).get("sent"):
                break
            assert launch.poll() is None and time.monotonic() < deadline, launch.stdout.read()
            time.sleep(0.2)
        server.signal(signal.SIGSTOP)  # frozen: every request hangs
        time.sleep(4)
        server.kill()  # then gone for good
        output, _ = launch.communicate(timeout=600)
        assert launch.returncode == 0 and "finished: 1 done" in output, output
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "done"
        assert status["tracking"]["state"] == "failing" and status["tracking"]["complete"] is False
        assert "cannot send to " + server.uri in status["tracking"]["warning"]
        log = (run_dir / "train.log").read_text()
        assert "warning: tracking: " + server.uri in log
        normal = update_gaps((finished_run.parent / "stdout.log").read_text())
        gaps = update_gaps(log)
        assert len(gaps) >= 5 and max(gaps) <= max(3 * max(normal), max(normal) + 5), (gaps, normal)

        server = MlflowServer(tmp_path / "server", port=server.port).start()  # a new server on the same store
        synced = subprocess.run([sys.executable, "-m", "suite.cli", "sync", "smoke", "--runs-dir", str(runs)],
                                capture_output=True, text=True, timeout=300)
        assert synced.returncode == 0 and "synced 1 run(s)" in synced.stdout, synced.stdout + synced.stderr
        assert history(run_dir, server.uri, "smoke") == history(finished_run)
        client, (run,) = mlflow_runs(run_dir, server.uri, "smoke")
        assert run.data.tags["twm.status"] == "done" and run.info.status == "FINISHED"
    finally:
        launch.kill()
        server.stop()


@pytest.mark.slow
def test_sigterm_checkpoints_exits_3_and_resume_reaches_the_uninterrupted_result(tmp_path, finished_run):
    out = tmp_path / "stopped"
    proc = start_run(out)
    wait_for_phase(out, proc, {"main"})
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output
    assert json.loads((out / "status.json").read_text())["state"] == "interrupted"
    result = twm_train(*run_args(out))
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = json.loads((out / "final_scores.json").read_text())
    reference = json.loads((finished_run / "final_scores.json").read_text())
    assert resumed["episodes"] == reference["episodes"]  # same path as the uninterrupted run
    assert resumed["train_steps"] == reference["train_steps"]


def test_non_finite_loss_stops_with_the_loss_name_and_update_number(tmp_path):
    out = tmp_path / "nan"
    # a learning rate of 1e30 makes the first observation-model steps produce NaN weights
    result = twm_train(*run_args(out, "--set", "obs.lr=1e30"), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "non-finite" in message and "at update" in message and "obs/" in message
    assert (out / "FAILED").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    # the checkpoint written after prefill is still a good one
    evaluation = twm_train("evaluate", "--checkpoint", str(out), "--episodes", "1", "--envs", "1")
    assert evaluation.returncode == 0, evaluation.stderr


def test_params_command_prints_spec_counts():
    for game, a in (("Breakout", 4), ("Boxing", 18)):
        result = twm_train("params", "--game", game, timeout=120)
        assert result.returncode == 0, result.stderr
        counts = json.loads(result.stdout)
        assert counts["observation"] == 8_234_532
        assert counts["dynamics"] == 10_777_858 + 256 * a
        assert counts["actor"] == 1_312_768 + 513 * a
        assert counts["critic"] == 1_313_281
        assert counts["total"] == 21_638_439 + 769 * a


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
