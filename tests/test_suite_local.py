"""End to end on this machine: `twm-suite launch smoke` through the local pool into a real `mlflow server`
on loopback, `status` shows it done, and a second launch submits nothing; a stopped server is a one-line error
within seconds. Also the debug executor."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# A smoke run cut further down (about 20 s on 2 cores): the whole pipeline, not learning.
TINY = ["schedule.budget=12000", "schedule.pretrain_budget=3000", "buffer.capacity=1000", "env.time_limit=300",
        "schedule.eval_episodes=1", "schedule.final_eval_episodes=2"]


def tiny_args() -> list[str]:
    return [arg for item in TINY for arg in ("--set", item)]


def suite(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port with a sqlite backend; always killed. Yields (uri, process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path_factory.mktemp("server")  # a clean CWD: uvicorn puts it on sys.path
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                             "--artifacts-destination", str(home / "artifacts")],
                            cwd=home, stdout=open(home / "server.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (home / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        yield uri, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_local_launch_logs_to_an_mlflow_server_and_a_relaunch_submits_nothing(tmp_path, mlflow_server):
    import mlflow

    mlflow_server, _ = mlflow_server
    runs = tmp_path / "runs"
    args = ["smoke", "--games", "Pong", "--seeds", "0", "--runs-dir", str(runs), "--tracking-uri", mlflow_server,
            *tiny_args()]
    first = suite("launch", *args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 to run" in first.stdout and "finished: 1 done" in first.stdout
    (run_dir,) = runs.glob("smoke/base/Pong/s0-*")
    done = json.loads((run_dir / "DONE").read_text())
    assert done["env_steps"] == 1000

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("smoke")
    (run,) = client.search_runs([experiment.experiment_id])
    tags = run.data.tags
    assert tags["twm.run_key"] == f"smoke/base/Pong/{run_dir.name}" and tags["twm.status"] == "done"
    assert tags["twm.grid"] == "smoke" and tags["twm.variant"] == "base" and tags["twm.git_commit"]
    assert run.info.run_name == f"base/Pong/{run_dir.name}"
    assert run.data.metrics["final/score"] == done["final_score"]

    status = suite("status", "smoke", "--games", "Pong", "--seeds", "0", "--runs-dir", str(runs), *tiny_args())
    header, row = status.stdout.splitlines()[0].split(), status.stdout.splitlines()[2].split()
    assert status.returncode == 0 and row[header.index("done")] == "1", status.stdout

    (run_dir / "DONE").unlink()  # the MLflow tag alone also marks it done
    second = suite("launch", *args)
    assert second.returncode == 0 and "0 to run, 1 done" in second.stdout and "nothing to submit" in second.stdout
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_a_stopped_tracking_server_is_one_line_within_seconds_and_status_does_not_need_it(tmp_path, mlflow_server):
    uri, server = mlflow_server
    runs = tmp_path / "runs"
    os.killpg(server.pid, signal.SIGSTOP)  # it accepts connections (the kernel does) but never answers
    try:
        started = time.monotonic()
        out = suite("launch", "smoke", "--games", "Pong", "--seeds", "0", "--runs-dir", str(runs), "--tracking-uri",
                    uri, *tiny_args(), timeout=60)
        launch_s = time.monotonic() - started
        started = time.monotonic()
        status = suite("status", "smoke", "--runs-dir", str(runs), timeout=60)
        status_s = time.monotonic() - started
    finally:
        os.killpg(server.pid, signal.SIGCONT)
    assert out.returncode == 2 and launch_s < 10, (launch_s, out.stdout, out.stderr)
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"twm-suite: error: tracking server {uri} is unreachable") and "timed out" in line, line
    assert not list(runs.rglob("submitted.json"))
    assert status.returncode == 0 and status_s < 10 and "not-started" in status.stdout, status.stdout


def test_debug_executor_runs_in_process_into_the_default_sqlite_store(tmp_path):
    import mlflow

    runs = tmp_path / "runs"
    out = suite("launch", "smoke", "--games", "Breakout", "--seeds", "1", "--executor", "debug",
                "--runs-dir", str(runs), *tiny_args())
    assert out.returncode == 0, out.stdout + out.stderr
    assert (runs / "mlflow.db").exists() and list(runs.glob("smoke/base/Breakout/s1-*/DONE"))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.data.tags["twm.executor"] == "debug" and run.data.tags["twm.status"] == "done"


def test_a_trainer_that_segfaults_is_failed_with_its_stack_in_train_log(tmp_path):
    from twm.run_record import FAILED, STATUS, TRAIN_LOG, lock_holder

    runs = tmp_path / "runs"
    launcher = subprocess.Popen([sys.executable, "-m", "suite.cli", "launch", "smoke", "--games", "Pong", "--seeds",
                                 "0", "--runs-dir", str(runs), *tiny_args()],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while True:
            found = list(runs.glob("smoke/base/Pong/s0-*/" + STATUS))
            holder = lock_holder(found[0].parent) if found else None
            if holder:
                break
            assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[0]
            time.sleep(0.2)
        os.kill(holder["pid"], signal.SIGSEGV)  # what a crash in a native library delivers
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    run_dir = found[0].parent
    assert launcher.returncode == 1 and "1 failed" in output, output
    reason = (run_dir / FAILED).read_text()
    assert reason.startswith("killed by signal SIGSEGV; the Python stack of every thread is at the end of train.log")
    log = (run_dir / TRAIN_LOG).read_text()
    assert "Fatal Python error: Segmentation fault" in log and 'File "' in log.split("Fatal Python error")[1]
    status = suite("status", "smoke", "--runs-dir", str(runs), "--games", "Pong", "--seeds", "0", *tiny_args())
    assert "killed by signal SIGSEGV" in status.stdout, status.stdout
