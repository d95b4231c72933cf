"""Run states from run directories (markers, the trainer's run lock, submission records), the status table,
and the launch-side idempotence rules built on them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from suite.cli import main
from suite.grids import get_grid, plan
from suite.launch import select
from suite.rundir import DONE, FAILED, STATUS, record_submission, run_state, write_json
from suite.status import collect, format_table
from twm.run_record import RunLock, lock_holder


def _status(run_dir, env_step, state="running", last_eval=None):
    now = time.time()
    write_json(run_dir / STATUS, {"state": state, "env_step": env_step, "total_env_steps": 1500,
                                  "last_eval_return": last_eval, "last_eval_step": None, "started": now - 100,
                                  "updated": now, "pid": 1, "host": "h", "mlflow_run_id": "x", "attempt": 1})


def _four_runs(tmp_path):
    """smoke grid: Pong s0 done, Pong s1 running (this process holds its run lock, as its trainer would),
    Breakout s0 failed, Breakout s1 interrupted."""
    specs = {(s.game, s.seed): s for s in plan(get_grid("smoke"))}
    dirs = {k: s.run_dir(tmp_path) for k, s in specs.items()}
    for d in dirs.values():
        d.mkdir(parents=True)
    _status(dirs["Pong", 0], 1500, "done", last_eval=-19.0)
    (dirs["Pong", 0] / DONE).write_text(json.dumps({"final_score": -19.0}))
    _status(dirs["Pong", 1], 500, last_eval=-21.0)
    claim = RunLock.acquire(dirs["Pong", 1])
    _status(dirs["Breakout", 0], 700, "failed")
    (dirs["Breakout", 0] / FAILED).write_text("non-finite loss at step 700\n")
    _status(dirs["Breakout", 1], 900, "interrupted")
    return specs, claim


def test_states_come_from_markers_the_run_lock_and_the_queue(tmp_path):
    specs, claim = _four_runs(tmp_path)
    try:
        states = {(s.spec.game, s.spec.seed): s for s in collect(list(specs.values()), tmp_path)}
        assert {k: s.state for k, s in states.items()} == {
            ("Pong", 0): "done", ("Pong", 1): "running", ("Breakout", 0): "failed", ("Breakout", 1): "interrupted"}
        assert states["Pong", 1].reason == f"trainer pid {os.getpid()} on {socket.gethostname()}"
        assert states["Breakout", 1].reason == "stopped after a checkpoint at env step 900"
        assert states["Pong", 1].eta_s is not None and states["Pong", 1].eta_s > 0
        assert states["Breakout", 0].reason == "non-finite loss at step 700"
        # a Slurm job id still in the queue: pending before it ever started, requeued after
        spec = specs["Breakout", 1]
        record_submission(spec.run_dir(tmp_path), "77_1", "slurm")
        assert run_state(spec, tmp_path, {"77_1": ("PENDING", "BeginTime")}).state == "requeued"
        assert run_state(spec, tmp_path, {"77_1": ("RUNNING", "None")}).state == "running"
        fresh = plan(get_grid("smoke"), overrides={"buffer.temperature": "inf"})[0]
        record_submission(fresh.run_dir(tmp_path), "78_0", "slurm")
        assert run_state(fresh, tmp_path, {"78_0": ("PENDING", "Priority")}).state == "pending"
        assert run_state(fresh, tmp_path, {}).state == "not-started"  # left the queue without starting
        assert "no longer queued" in run_state(fresh, tmp_path, {}).reason
        assert run_state(fresh, tmp_path, None).state == "unknown"  # squeue failed: not guessed
    finally:
        claim.release()
    gone = run_state(specs["Pong", 1], tmp_path, {})  # the lock died with its holder; status.json says running
    assert gone.state == "interrupted" and "without a final checkpoint" in gone.reason


def test_a_local_pool_submission_is_pending_while_its_launcher_lives(tmp_path):
    spec = plan(get_grid("smoke"))[0]
    record_submission(spec.run_dir(tmp_path), f"local{os.getpid()}", "local")
    assert run_state(spec, tmp_path, {}).state == "pending"
    write_json(spec.run_dir(tmp_path) / "submitted.json",
               {"job_id": "local1", "executor": "local", "host": socket.gethostname(), "pid": 2**22 + 1})
    assert run_state(spec, tmp_path, {}).state == "not-started"


def test_relaunch_skips_done_failed_and_live_runs_and_resumes_the_rest(tmp_path):
    specs, claim = _four_runs(tmp_path)
    try:
        chosen = select(list(specs.values()), tmp_path, mlflow_done=set(), force=False, retry_failed=False, queue={})
        assert [s.game + str(s.seed) for s in chosen.to_run] == ["Breakout1"]  # interrupted: resumed, no flag
        assert [s.game + str(s.seed) for s in chosen.done] == ["Pong0"]
        assert [s.game + str(s.seed) for s in chosen.failed] == ["Breakout0"]
        assert [s.game + str(s.seed) for s in chosen.active] == ["Pong1"]
        local = select(list(specs.values()), tmp_path, set(), False, False, queue={}, wait_for_held=True)
        assert [s.game + str(s.seed) for s in local.held] == ["Pong1"] and specs["Pong", 1] in local.to_run
        retry = select(list(specs.values()), tmp_path, set(), force=False, retry_failed=True, queue={})
        assert {s.game + str(s.seed) for s in retry.to_run} == {"Breakout0", "Breakout1"}
        forced = select(list(specs.values()), tmp_path, set(), force=True, retry_failed=False, queue={})
        assert len(forced.to_run) == 3 and len(forced.active) == 1  # never the running one
        by_tag = select([specs["Breakout", 1]], tmp_path, {specs["Breakout", 1].key}, False, False, queue={})
        assert by_tag.done == [specs["Breakout", 1]]  # MLflow says done: skipped too
        record_submission(specs["Breakout", 1].run_dir(tmp_path), "91_0", "slurm")
        queued = select([specs["Breakout", 1]], tmp_path, set(), False, False, queue={"91_0": ("PENDING", "")})
        assert queued.active == [specs["Breakout", 1]]  # still in this user's queue: never submitted twice
    finally:
        claim.release()


def test_status_table_counts_per_variant_and_game_and_exits_1_on_failure(tmp_path, capsys):
    specs, claim = _four_runs(tmp_path)
    try:
        assert main(["status", "smoke", "--runs-dir", str(tmp_path)]) == 1
    finally:
        claim.release()
    out = capsys.readouterr().out
    lines = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("base")}
    header = out.splitlines()[0].split()
    col = {name: header.index(name) for name in ("running", "done", "failed", "interrupted")}
    assert lines["Pong"][col["done"]] == "1" and lines["Pong"][col["running"]] == "1"
    assert lines["Breakout"][col["failed"]] == "1" and lines["Breakout"][col["interrupted"]] == "1"
    assert "failed: smoke/base/Breakout/s0-" in out and "non-finite loss" in out
    table = format_table(collect([specs["Pong", 0]], tmp_path))
    assert "1,500/1,500" in table and "-19.0" in table


def test_a_second_trainer_on_a_live_run_directory_exits_4_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock.acquire(run_dir)  # this process plays the live trainer
    before = sorted(p.name for p in run_dir.iterdir())
    try:
        out = subprocess.run([sys.executable, "-m", "twm.cli", "run", "--game", "Pong", "--seed", "0", "--preset",
                              "smoke", "--out", str(run_dir)], capture_output=True, text=True, timeout=120)
    finally:
        lock.release()
    assert out.returncode == 4, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line == (f"twm-train: error: {run_dir} is in use by another trainer (pid {os.getpid()} on "
                    f"{socket.gethostname()}); nothing done")
    assert sorted(p.name for p in run_dir.iterdir()) == before == [".claim.lock", "claim.json"]


def test_the_run_lock_dies_with_its_holder_even_on_kill_9(tmp_path):
    code = ("import sys, time; from pathlib import Path; from twm.run_record import RunLock; "
            "lock = RunLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path)["pid"] == holder.pid and RunLock.acquire(tmp_path, wait_s=0.2) is None
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path) is None
    lock = RunLock.acquire(tmp_path, wait_s=0)
    assert lock is not None and lock_holder(tmp_path)["pid"] == os.getpid()
    lock.release()


def test_a_running_run_whose_tracking_fails_says_so_under_the_table(tmp_path):
    specs, claim = _four_runs(tmp_path)
    run_dir = specs["Pong", 1].run_dir(tmp_path)
    status = json.loads((run_dir / STATUS).read_text())
    warning = "cannot send to http://127.0.0.1:9 since 2026-12-01 10:00:00 (3 attempts): ConnectionError: refused"
    write_json(run_dir / STATUS, status | {"tracking": {"state": "failing", "warning": warning}})
    try:
        table = format_table(collect(list(specs.values()), tmp_path))
    finally:
        claim.release()
    assert f"tracking: {specs['Pong', 1].key}: {warning}" in table.splitlines()
    assert sum(line.startswith("tracking: ") for line in table.splitlines()) == 1
