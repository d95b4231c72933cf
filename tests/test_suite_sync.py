"""`twm-suite sync` and the tracking design of a launch: what the dry run says per executor, a Slurm trainer
logging offline (the exact command a job runs) merged exactly once by a relaunch and by `sync`, and `sync`'s
one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from suite.grids import get_grid, plan
from suite.job import LaunchContext, train_command
from twm import run_record as rr
from twm.metric_log import read_points

# A smoke run cut further down (about 20 s on 2 cores): the whole pipeline, not learning.
TINY = ["schedule.budget=12000", "schedule.pretrain_budget=3000", "buffer.capacity=1000", "env.time_limit=300",
        "schedule.eval_episodes=1", "schedule.final_eval_episodes=2", "runtime.metrics_every=10"]


def suite(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite.cli", *args], capture_output=True, text=True, timeout=timeout)


def sets() -> list[str]:
    return [arg for item in TINY for arg in ("--set", item)]


def test_the_dry_run_says_where_metrics_go_for_each_executor(tmp_path):
    slurm = suite("launch", "smoke", "--executor", "slurm", "--cluster", "localci", "--dry-run", "--runs-dir",
                  str(tmp_path))
    assert slurm.returncode == 0, slurm.stderr
    assert "tracking: offline in the jobs" in slurm.stdout and "no job writes to a shared sqlite file" in slurm.stdout
    assert f"sqlite:///{tmp_path / 'mlflow.db'}" in slurm.stdout and "twm-suite sync smoke" in slurm.stdout
    assert " --offline " in next(line for line in slurm.stdout.splitlines() if line.startswith("first command:"))
    server = suite("launch", "smoke", "--executor", "slurm", "--cluster", "localci", "--dry-run", "--runs-dir",
                   str(tmp_path), "--tracking-uri", "http://127.0.0.1:5000")
    assert "tracking: MLflow server http://127.0.0.1:5000, fed by each trainer's background sender" in server.stdout
    assert " --offline " not in server.stdout
    local = suite("launch", "smoke", "--dry-run", "--runs-dir", str(tmp_path))
    assert f"tracking: local store sqlite:///{tmp_path / 'mlflow.db'}" in local.stdout
    assert not (tmp_path / "mlflow.db").exists()  # a dry run creates nothing


@pytest.mark.slow
def test_offline_slurm_trainers_are_merged_exactly_once_by_a_relaunch_and_by_sync(tmp_path):
    from mlflow.tracking import MlflowClient

    runs = tmp_path / "runs"
    (spec,) = plan(get_grid("smoke"), ("Pong",), (0,), overrides=dict(item.split("=") for item in TINY))
    uri = f"sqlite:///{runs / rr.MLFLOW_DB}"
    command = train_command(spec, LaunchContext(runs_dir=runs, tracking_uri=uri, experiment="smoke",
                                                executor="slurm", offline=True), "4242_0")
    run_dir = spec.run_dir(runs)
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0  # as the job runs it
    assert not (runs / rr.MLFLOW_DB).exists() and not (run_dir / rr.MLFLOW_DB).exists()  # offline: no store
    status = rr.read_json(run_dir / rr.STATUS)
    assert status["tracking"]["mode"] == "offline" and status["mlflow_run_id"] is None

    relaunch = suite("launch", "smoke", "--games", "Pong", "--seeds", "0", "--runs-dir", str(runs), *sets())
    assert relaunch.returncode == 0 and "0 to run, 1 done" in relaunch.stdout, relaunch.stdout + relaunch.stderr
    assert "synced 1 run(s) into " + uri in relaunch.stdout and " 0 points sent" not in relaunch.stdout

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    counts = Counter((k, m.step) for k in run.data.metrics for m in client.get_metric_history(run.info.run_id, k))
    local = {p.ident for p in read_points(run_dir / rr.METRICS)[0]}
    assert max(counts.values()) == 1 and set(counts) == local and ("final/score", 1000) in counts
    tags = run.data.tags
    assert tags[rr.TAG_STATUS] == rr.STATE_DONE and tags[rr.TAG_RUN_KEY] == spec.key
    assert tags[rr.TAG_SLURM_JOB_ID] == "4242_0" and tags[rr.TAG_EXECUTOR] == "slurm"
    assert run.info.artifact_uri.startswith(str(runs / rr.MLFLOW_ARTIFACTS))

    again = suite("sync", "smoke", "--runs-dir", str(runs))
    assert again.returncode == 0, again.stderr
    assert "synced 1 run(s)" in again.stdout and ": 0 points sent" in again.stdout
    assert "1 run(s) unchanged" in again.stdout
    assert "workflowType=machine_learning" in again.stdout  # the UI link opens the runs table
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_sync_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "smoke").mkdir()
    cases = [(["sync", "nosuchgrid", "--runs-dir", str(tmp_path)], "unknown grid"),
             (["sync", "smoke", "--runs-dir", str(tmp_path / "absent")], "does not exist"),
             (["sync", "smoke", "--runs-dir", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"], "unreachable")]
    for args, message in cases:
        result = suite(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("twm-suite: error: "), result.stderr
        assert message in lines[0]


def test_sync_of_runs_whose_server_is_unreachable_fails_before_any_work(tmp_path):
    run_dir = tmp_path / "smoke" / "base" / "Pong" / "s0-0123456789"
    run_dir.mkdir(parents=True)
    rr.write_json_atomic(run_dir / rr.MLFLOW_RUN, {"tracking_uri": "http://127.0.0.1:9", "uid": "x"})
    before = json.dumps(rr.read_json(run_dir / rr.MLFLOW_RUN))
    result = suite("sync", "smoke", "--runs-dir", str(tmp_path))
    assert result.returncode == 2 and "http://127.0.0.1:9 is unreachable" in result.stderr, result.stderr
    assert json.dumps(rr.read_json(run_dir / rr.MLFLOW_RUN)) == before
