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
from pathlib import Path

import pytest
from suite_helpers import sets, wait_for

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


def test_smoke_grid_runs_as_one_job_array_and_a_relaunch_submits_nothing(tmp_path):
    args = ["smoke", "--executor", "slurm", "--cluster", "localci", "--runs-dir", str(tmp_path), *sets(TINY)]
    first = suite("launch", *args, "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted array" in first.stdout and "with 4 tasks" in first.stdout and "finished: 4 done" in first.stdout
    launches = [json.loads(line) for line in (tmp_path / "smoke/.submitit/launches.jsonl").read_text().splitlines()]
    assert len(launches) == 4 and len({entry["job_id"].split("_")[0] for entry in launches}) == 1
    array = launches[0]["job_id"].split("_")[0]
    assert (tmp_path / f"smoke/.submitit/{array}/{array}_submission.sh").exists()
    assert "differs from the script --dry-run prints" not in first.stdout  # checked against it at submission

    status = suite("status", "smoke", "--runs-dir", str(tmp_path), *sets(TINY))
    header, total = status.stdout.splitlines()[0].split(), status.stdout.splitlines()[-1].split()
    assert status.returncode == 0 and total[header.index("done") + 1] == "4", status.stdout

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
        assert "submitted" not in again.stdout
    finally:
        subprocess.run(["scancel", job_id], check=False)


def fake_command(folder, name: str, body: str) -> dict[str, str]:
    """An environment with a `name` script first on PATH (a fault injected into the real Slurm client set)."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n{body}\n")
    (folder / name).chmod(0o755)
    return dict(os.environ, PATH=f"{folder}:{os.environ['PATH']}")


@pytest.mark.parametrize(("body", "message"), [
    ('echo "$@" > "$(dirname "$0")/args"; echo "squeue: error: Unable to contact slurm controller" >&2; exit 1',
     "squeue --me exited 1: squeue: error: Unable to contact slurm controller"),
    ('echo "$@" > "$(dirname "$0")/args"; sleep 60', "squeue --me timed out after 5 s"),
])
def test_an_unreadable_slurm_queue_submits_nothing(tmp_path, body, message):
    runs = tmp_path / "runs"
    env = fake_command(tmp_path / "bin", "squeue", body)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "suite.cli", "launch", "smoke", "--games", "Pong", "--seeds", "0",
                          "--executor", "slurm", "--cluster", "localci", "--runs-dir", str(runs), *sets(TINY)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert time.monotonic() - started < 15
    assert out.returncode == 2 and out.stdout == "", (out.stdout, out.stderr)
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("twm-suite: error: cannot read the Slurm queue: ") and message in line, line
    assert line.endswith("; nothing submitted")
    assert not runs.exists()  # no submission file, no job record: sbatch was never called
    assert (tmp_path / "bin" / "args").read_text().split()[0] == "--me"  # only this user's jobs count


def test_the_dry_run_script_is_the_one_submitit_submits_and_hostile_arguments_arrive_intact(tmp_path):
    import shlex

    from twm.run_record import lock_holder

    runs = tmp_path / "a b;$(touch PWNED)'q\"x"  # a space, ;, $(...) and both quotes
    hostile = 'cpu; $(touch PWNED) "x"' + "'y'"
    args = ["launch", "smoke", "--games", "Pong", "--seeds", "0", "--executor", "slurm", "--cluster", "localci",
            "--runs-dir", str(runs)]
    # every override value is range-checked at parse time, so one with the same characters never reaches a script
    refused = subprocess.run([sys.executable, "-m", "suite.cli", *args, "--set", f"runtime.device={hostile}",
                              "--dry-run"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and not runs.exists()
    device = "cpu"  # the profile's --device wins; the override still travels through the script
    args += ["--set", f"runtime.device={device}", *sets(TINY)]
    dry = subprocess.run([sys.executable, "-m", "suite.cli", *args, "--dry-run"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("--- submission 1/1"))) + 1
    script = "\n".join(lines[start:lines.index("dry run: nothing submitted")]) + "\n"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    (command,) = [line.removeprefix("first command: ") for line in lines if line.startswith("first command: ")]
    argv = subprocess.run(["bash", "-c", "printf '%s\\0' " + command], capture_output=True, text=True,
                          cwd=tmp_path).stdout.split("\0")[:-1]
    assert argv == shlex.split(command) and f"runtime.device={device}" in argv and str(runs) in " ".join(argv)

    launched = subprocess.run([sys.executable, "-m", "suite.cli", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
    assert launched.returncode == 0 and "warning" not in launched.stdout, launched.stdout + launched.stderr
    (spec,) = plan(get_grid("smoke"), ("Pong",), (0,), overrides=parse_overrides([f"runtime.device={device}", *TINY]))
    run_dir = spec.run_dir(runs)
    job_id = json.loads((run_dir / "submitted.json").read_text())["job_id"]
    try:
        submitted = (runs / "smoke" / ".submitit" / job_id / f"{job_id}_submission.sh").read_text()
        assert submitted == script  # what sbatch got is what the dry run printed
        holder = wait_for(lambda: lock_holder(run_dir), 120, "the trainer to start and take its run lock")
        trainer_argv = [a.decode() for a in open(f"/proc/{holder['pid']}/cmdline", "rb").read().split(b"\0")[:-1]]
        expected = [a.replace("<job id>", job_id) for a in argv]
        assert trainer_argv[trainer_argv.index("run"):] == expected[expected.index("run"):]
    finally:
        subprocess.run(["scancel", job_id], check=False)
    assert not list(tmp_path.rglob("PWNED")) and not list(Path.cwd().glob("PWNED"))
