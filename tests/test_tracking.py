"""The local metric log and its mirror in MLflow (twm.metric_log, twm.tracking), on real sqlite stores and a
real port with no server behind it: torn lines, cut-back on resume, exactly-once sending after lost
acknowledgements and redone steps, finding the run again by its uid, the lock, and a sender that backs off
and never raises."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from twm import run_record as rr
from twm.metric_log import MetricLog, read_points
from twm.tracking import Mirror, Sender, TrackingLock, record_run


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def make_run(run_dir: Path, uri: str, state: str = rr.STATE_RUNNING) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record_run(run_dir, uri, "exp", "Pong-s0", {rr.TAG_GAME: "Pong", rr.TAG_SEED: "0"}, {"buffer.capacity": 1500},
               None, offline=False)
    rr.write_json_atomic(run_dir / rr.STATUS, {"state": state})


def history(uri: str, run_id: str) -> Counter:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    return Counter((k, m.step) for k in run.data.metrics for m in client.get_metric_history(run_id, k))


def test_metric_log_skips_a_torn_last_line_and_cuts_back_to_a_checkpoint(tmp_path):
    log = MetricLog(tmp_path / rr.METRICS)
    log.append({"obs/loss": 1.0, "dyn/loss": 2.0}, step=100)
    size = log.sync()  # what a checkpoint records
    log.append({"obs/loss": 0.5}, step=200)
    with open(tmp_path / rr.METRICS, "ab") as f:
        f.write(b'{"key": "obs/loss", "value": 0.4, "st')  # a kill mid-append
    points, offset, skipped = read_points(tmp_path / rr.METRICS)
    assert [p.ident for p in points] == [("obs/loss", 100), ("dyn/loss", 100), ("obs/loss", 200)]
    assert skipped == 0 and offset < (tmp_path / rr.METRICS).stat().st_size  # the torn line waits
    log.truncate(size)  # resume from the checkpoint: the later points are redone
    log.append({"obs/loss": 0.5}, step=200)
    log.close()
    points, offset, _ = read_points(tmp_path / rr.METRICS)
    assert [p.ident for p in points] == [("obs/loss", 100), ("dyn/loss", 100), ("obs/loss", 200)]
    assert offset == (tmp_path / rr.METRICS).stat().st_size


def test_mirror_sends_each_key_step_once_after_lost_acknowledgements_and_redone_steps(tmp_path):
    uri = sqlite_uri(tmp_path)
    run_dir = tmp_path / "run"
    make_run(run_dir, uri)
    log = MetricLog(run_dir / rr.METRICS)
    for step in range(1, 1501):  # more than one log_batch of 1000
        log.append({"obs/loss": 1.0 / step}, step=step)
    size = log.sync()
    log.append({"eval/return": 3.0}, step=1500)
    first = Mirror(run_dir)
    assert first.step() == 1501
    # A crash after MLflow stored the points but before anything local said so: a new process knows nothing.
    record = rr.read_json(run_dir / rr.MLFLOW_RUN)
    record["synced"] = {}
    rr.write_json_atomic(run_dir / rr.MLFLOW_RUN, record)
    again = Mirror(run_dir)
    assert again.step() == 0 and again.present == 1501
    # A resume cuts the log back to its checkpoint and redoes the step: new timestamp, same (key, step).
    log.truncate(size)
    time.sleep(0.01)
    log.append({"eval/return": 3.5}, step=1500)
    log.append({"final/score": 4.0}, step=1500)
    log.close()
    assert Mirror(run_dir).step() == 1  # only final/score is new
    counts = history(uri, first.run_id)
    assert max(counts.values()) == 1 and len(counts) == 1502


def test_a_run_whose_id_was_never_recorded_is_found_again_by_its_uid(tmp_path):
    uri = sqlite_uri(tmp_path)
    run_dir = tmp_path / "run"
    make_run(run_dir, uri)
    first = Mirror(run_dir)
    first.step()
    record = rr.read_json(run_dir / rr.MLFLOW_RUN)
    record["run_ids"], record["synced"] = {}, {}  # killed between creating the MLflow run and recording its id
    rr.write_json_atomic(run_dir / rr.MLFLOW_RUN, record)
    second = Mirror(run_dir)
    second.step()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert second.run_id == first.run_id and len(runs) == 1
    assert runs[0].data.params["buffer.capacity"] == "1500" and runs[0].data.tags[rr.TAG_GAME] == "Pong"


def test_done_is_tagged_after_the_final_score_and_artifacts_land_beside_the_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = sqlite_uri(tmp_path)
    run_dir = tmp_path / "run"
    make_run(run_dir, uri)
    record_run(run_dir, uri, "exp", "Pong-s0", {}, {}, str(tmp_path / rr.MLFLOW_ARTIFACTS), offline=False)
    log = MetricLog(run_dir / rr.METRICS)
    log.append({rr.FINAL_SCORE: 7.0}, step=1500)
    log.close()
    (run_dir / rr.FINAL_SCORES).write_text(json.dumps({"final_score": 7.0}))
    rr.write_json_atomic(run_dir / rr.STATUS, {"state": rr.STATE_DONE})
    mirror = Mirror(run_dir)
    mirror.step()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(mirror.run_id)
    assert run.data.tags[rr.TAG_STATUS] == rr.STATE_DONE and run.data.metrics[rr.FINAL_SCORE] == 7.0
    assert run.info.status == "FINISHED"
    assert (tmp_path / rr.MLFLOW_ARTIFACTS / mirror.run_id / "artifacts" / rr.FINAL_SCORES).exists()
    assert not Path("mlruns").exists() or not list(Path("mlruns").glob(f"*/{mirror.run_id}"))
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[rr.TAG_EXPERIMENT_KIND] == rr.EXPERIMENT_KIND_TRAINING


def test_an_unchanged_run_is_not_asked_of_mlflow_again(tmp_path):
    uri = sqlite_uri(tmp_path)
    run_dir = tmp_path / "run"
    make_run(run_dir, uri)
    log = MetricLog(run_dir / rr.METRICS)
    log.append({"obs/loss": 1.0}, step=1)
    log.close()
    Mirror(run_dir).step()
    (tmp_path / "mlflow.db").rename(tmp_path / "moved.db")  # any MLflow call would now fail or see nothing
    unchanged = Mirror(run_dir)
    assert unchanged.step() == 0 and unchanged.unchanged
    assert not (tmp_path / "mlflow.db").exists()


def test_sender_against_a_dead_server_warns_backs_off_and_closes_within_its_bound(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once the socket is closed
    run_dir = tmp_path / "run"
    make_run(run_dir, dead)
    MetricLog(run_dir / rr.METRICS).append({"obs/loss": 1.0}, step=1)
    lines, changes = [], []
    sender = Sender(Mirror(run_dir), TrackingLock.acquire(run_dir, wait=False), 0.1, lines.append,
                    lambda: changes.append(1))
    sender.start()
    deadline = time.monotonic() + 30
    while sender.failures < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sender.failures >= 2 and "Connection" in sender.last_error
    assert len([line for line in lines if line.startswith("warning: tracking:")]) == 1  # not one per attempt
    assert changes  # status.json is told
    started = time.monotonic()
    assert sender.close(1.0) is False
    assert time.monotonic() - started < 5


def test_sync_leaves_a_run_to_the_sender_that_holds_its_lock(tmp_path):
    from suite.tracking import sync_runs

    uri = sqlite_uri(tmp_path)
    run_dir = tmp_path / "run"
    make_run(run_dir, uri)
    held = TrackingLock.acquire(run_dir, wait=False)
    assert TrackingLock.acquire(run_dir, wait=False) is None
    report = sync_runs([run_dir], progress=False)
    assert report.live == [run_dir] and report.runs == 0
    held.release()
    report = sync_runs([run_dir], progress=False)
    assert report.runs == 1 and not report.live and not report.failed


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only), to fill up for real."""
    import os
    import subprocess

    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_an_append_cut_short_by_a_full_disk_does_not_garble_the_next_points(tiny_tmpfs):
    log = MetricLog(tiny_tmpfs / rr.METRICS)
    log.append({"obs/loss": 1.0}, step=1)
    filler = tiny_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 512)
        except OSError:
            pass
    with pytest.raises(OSError):
        log.append({f"key/{i}": float(i) for i in range(200)}, step=2)  # part of it reaches the disk
    filler.unlink()
    log.append({"obs/loss": 0.5}, step=3)
    log.close()
    points, offset, skipped = read_points(tiny_tmpfs / rr.METRICS)
    assert ("obs/loss", 1) == points[0].ident and ("obs/loss", 3) == points[-1].ident
    assert skipped == 1 and offset == (tiny_tmpfs / rr.METRICS).stat().st_size


def test_concurrent_first_users_of_a_fresh_sqlite_store_share_one_schema_and_experiment(tmp_path):
    # Without the schema lock 3 or 4 of 4 such processes crash in MLflow's alembic migrations.
    code = ("import sys; from pathlib import Path; from suite.tracking import ensure_experiment; "
            "d = Path(sys.argv[1]); print(ensure_experiment(f'sqlite:///{d}/mlflow.db', 'smoke', d))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=120), p.stdout.read().strip(), p.stderr.read()) for p in procs]
    assert [code for code, _, _ in results] == [0] * 4, [err for _, _, err in results]
    assert len({experiment_id for _, experiment_id, _ in results}) == 1


def test_the_sender_thread_changes_no_environment_and_loads_no_native_library(tmp_path):
    """Two things must not happen on the sender's thread while the trainer steps torch and the emulator: setting
    an environment variable (it reallocates the C environment under any native getenv) and the first import
    of MLflow's native dependencies (pandas, pyarrow, ...). The Tracker does both on the caller's thread."""
    script = """
import os, sys
from pathlib import Path
import torch
from twm.metric_log import MetricLog
from twm.tracking import Tracker

def native_libraries():
    return {line.split()[-1] for line in open("/proc/self/maps") if ".so" in line and "site-packages" in line}

run_dir = Path(sys.argv[1])
tracker = Tracker(f"sqlite:///{run_dir.parent / 'mlflow.db'}", "exp", interval_s=0.1, close_s=60)
before, libraries = dict(os.environ), native_libraries()
run_dir.mkdir()
MetricLog(run_dir / "metrics.jsonl").append({"obs/loss": 1.0}, step=1)
tracker.start(run_dir, {"buffer.capacity": 10}, log=print)
assert tracker.close() and tracker.summary()["sent"] == 1, tracker.summary()
changed = {k for k in before.keys() | os.environ.keys() if before.get(k) != os.environ.get(k)}
assert not changed, changed
assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # the settings are there all the same
assert native_libraries() == libraries, sorted(native_libraries() - libraries)
print("unchanged")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "unchanged" in result.stdout, result.stdout + result.stderr


def migrating(folder: Path, name: str) -> bool:
    """Some file of the store `name` in `folder` (the store itself or its temp file) holds MLflow's migration
    bookkeeping: the schema's migrations have begun."""
    import sqlite3

    for path in folder.iterdir():
        if path.name == name or (path.name.startswith(f".{name}") and rr.is_temp(path)):
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05) as db:
                    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
                        return True
            except sqlite3.Error:
                pass
    return False


@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.15, 0.3])
def test_a_process_killed_while_it_creates_a_sqlite_store_leaves_none_or_a_whole_one(tmp_path, delay_s):
    """MLflow makes a schema by 68 migrations that sqlite commits one by one; SIGKILL lands among them
    (as it may in a trainer's first sender pass). The next opener must find a usable store, or none."""
    database = tmp_path / "mlflow.db"
    code = ("import sys; from twm.tracking import client_for; import mlflow.tracking; "
            "print('ready', flush=True); client_for(f'sqlite:///{sys.argv[1]}')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(database)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not migrating(tmp_path, database.name):
            assert proc.poll() is None and time.monotonic() < deadline, "the migrations were never begun"
            time.sleep(0.002)
        time.sleep(delay_s)
    finally:
        proc.kill()
        proc.wait()
    from twm.tracking import client_for

    client = client_for(f"sqlite:///{database}")  # the next user: a trainer's resumed sender, or sync
    run = client.create_run(client.create_experiment("smoke"))
    client.log_metric(run.info.run_id, "obs/loss", 0.5, step=100)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "obs/loss")] == [100]
    assert not [p for p in tmp_path.iterdir() if rr.is_temp(p)]
