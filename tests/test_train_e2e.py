"""End to end on a real ALE game with the smoke preset: a whole run, resume after SIGKILL and SIGTERM and
non-finite losses (bad input, identity, corrupt checkpoints and full disks: tests/test_run_integrity.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GAME = "Breakout"
# the smoke preset with a smaller main-loop budget (214 train steps): the same code path, faster
FAST = ["--set", "runtime.checkpoint_interval_s=2", "--set", "runtime.eval_envs=2", "--set", "schedule.budget=40000"]


def twm_train(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def start_run(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "twm.cli", "run", "--game", GAME, "--seed", "3", "--preset", "smoke",
           "--out", str(out), "--no-progress", *FAST, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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


def mlflow_runs(out: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("twm")
    return client, client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One uninterrupted smoke run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("run") / "breakout-s3"
    result = twm_train(*run_args(out))
    assert result.returncode == 0, result.stdout + result.stderr
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
    # a second invocation on a finished run does nothing
    again = twm_train(*run_args(finished_run))
    assert again.returncode == 0 and "already done" in again.stdout


@pytest.mark.slow
def test_sigkill_mid_training_then_restart_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "killed"
    proc = start_run(out)
    wait_for_phase(out, proc, {"main"})
    time.sleep(3)
    proc.kill()
    proc.wait()
    before = json.loads((out / "status.json").read_text())
    assert before["state"] == "running"  # nothing could mark it: SIGKILL
    result = twm_train(*run_args(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from checkpoint" in result.stdout
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done" and status["attempt"] >= 2
    _, runs = mlflow_runs(out)
    assert len(runs) == 1 and runs[0].data.tags["twm.status"] == "done"  # the same MLflow run, reopened


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
