"""The Slurm path against a real single-node Slurm (slurm/start_local_slurm.sh): the smoke grid as a
submitit job array, a relaunch that submits nothing, and a job preempted mid-run that checkpoints,
requeues, resumes from its checkpoint into the same MLflow run and ends with the same final score.

Skipped when no Slurm answers, unless TWM_REQUIRE_SLURM=1 (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from suite.cluster import slurm_available
from suite.grids import get_grid, plan
from suite.status import collect
from twm.config import parse_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = ["schedule.budget=12000", "schedule.pretrain_budget=3000", "buffer.capacity=1000", "env.time_limit=300",
        "schedule.eval_episodes=1", "schedule.final_eval_episodes=2"]
# Long enough in its main phase (tens of seconds) to be preempted in the middle of it.
LONGER = [*TINY[1:], "schedule.budget=50000"]


@pytest.fixture(autouse=True)
def slurm():
    if not slurm_available():
        reason = "no Slurm answers here (start one with: bash slurm/start_local_slurm.sh)"
        if os.environ.get("TWM_REQUIRE_SLURM") == "1":
            pytest.fail(reason + " but TWM_REQUIRE_SLURM=1")
        pytest.skip(reason)


def suite(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite.cli", *args], capture_output=True, text=True, timeout=timeout)


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_smoke_grid_runs_as_one_job_array_and_a_relaunch_submits_nothing(tmp_path):
    args = ["smoke", "--executor", "slurm", "--cluster", "localci", "--runs-dir", str(tmp_path), *sets(TINY)]
    first = suite("launch", *args, "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted array" in first.stdout and "with 4 tasks" in first.stdout and "finished: 4 done" in first.stdout
    launches = [json.loads(line) for line in (tmp_path / "smoke/.submitit/launches.jsonl").read_text().splitlines()]
    assert len(launches) == 4 and len({entry["job_id"].split("_")[0] for entry in launches}) == 1

    status = suite("status", "smoke", "--runs-dir", str(tmp_path), *sets(TINY))
    assert status.returncode == 0 and status.stdout.splitlines()[-1].split()[6] == "4", status.stdout  # done

    second = suite("launch", *args)
    assert second.returncode == 0 and "0 to run, 4 done" in second.stdout and "nothing to submit" in second.stdout
    assert len((tmp_path / "smoke/.submitit/launches.jsonl").read_text().splitlines()) == 4


def test_a_preempted_job_checkpoints_requeues_and_resumes_to_the_same_result(tmp_path):
    import mlflow

    runs, reference = tmp_path / "slurm", tmp_path / "local"
    selection = ["smoke", "--games", "Pong", "--seeds", "0", *sets(LONGER)]
    # The same cell uninterrupted, on the local pool, as the reference result.
    local = subprocess.Popen([sys.executable, "-m", "suite.cli", "launch", *selection, "--runs-dir", str(reference)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    launched = suite("launch", *selection, "--executor", "slurm", "--cluster", "localci", "--runs-dir", str(runs))
    assert launched.returncode == 0, launched.stdout + launched.stderr

    (spec,) = plan(get_grid("smoke"), ("Pong",), (0,), overrides=parse_overrides(LONGER))
    run_dir = spec.run_dir(runs)
    job_id = json.loads((run_dir / "submitted.json").read_text())["job_id"]

    def in_main_phase():
        status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
        return status.get("phase") == "main" and status.get("last_eval_step") is not None
    wait_for(in_main_phase, 300, "the run to reach its main phase")
    assert not (run_dir / "DONE").exists(), "the run finished before it could be preempted; make LONGER longer"
    # What submitit's own SlurmJob._interrupt() does on preemption: SIGTERM, then the USR2 it asked for.
    subprocess.run(["scancel", "--signal=TERM", job_id], check=True)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)

    seen = set()

    def finished():
        seen.add(collect([spec], runs)[0].state)
        return (run_dir / "DONE").exists()
    wait_for(finished, 420, "the requeued run to finish")
    assert "requeued" in seen, seen

    status = json.loads((run_dir / "status.json").read_text())
    assert status["attempt"] == 2 and status["state"] == "done"
    log = (run_dir / "train.log").read_text()
    assert "resumed from checkpoint" in log and "(main, attempt 2)" in log
    job_log = next((runs / "smoke/.submitit").glob(f"{job_id}/*_log.err")).read_text()
    assert "Requeued job" in job_log or "requeue" in job_log.lower()

    synced = suite("sync", "smoke", "--runs-dir", str(runs))  # the jobs logged offline (no shared sqlite)
    assert synced.returncode == 0 and "synced 1 run(s)" in synced.stdout, synced.stdout + synced.stderr
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.data.tags["twm.status"] == "done" and run.data.tags["slurm.job_id"] == job_id
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/return")]
    assert sorted(steps) == [500, 1000], steps  # once each, although the job was preempted and requeued

    assert local.wait(timeout=420) == 0, local.stdout.read()
    expected = json.loads(next(reference.glob("smoke/base/Pong/s0-*/DONE")).read_text())
    got = json.loads((run_dir / "DONE").read_text())
    assert got["env_steps"] == expected["env_steps"] == 1000
    assert got["final_score"] == expected["final_score"], (got, expected)


def test_a_queued_or_running_cell_is_never_submitted_twice(tmp_path):
    """While a run's job is in the queue (seen through squeue, never sacct), a relaunch skips it."""
    args = ["smoke", "--games", "Pong", "--seeds", "1", "--executor", "slurm", "--cluster", "localci",
            "--runs-dir", str(tmp_path), *sets(LONGER)]
    launched = suite("launch", *args)
    assert launched.returncode == 0, launched.stderr
    (spec,) = plan(get_grid("smoke"), ("Pong",), (1,), overrides=parse_overrides(LONGER))
    job_id = json.loads((spec.run_dir(tmp_path) / "submitted.json").read_text())["job_id"]
    try:
        assert collect([spec], tmp_path)[0].state in {"pending", "running"}
        again = suite("launch", *args)
        assert "0 to run" in again.stdout and "1 queued or running" in again.stdout, again.stdout
        assert "submitted array" not in again.stdout
    finally:
        subprocess.run(["scancel", job_id], check=False)
