"""The production tracking setup, as docs/suite.md describes it: an `mlflow server` bound to loopback with a
real PostgreSQL backend (Debian's package) and its artifacts in a folder of its own, fed at once by
concurrent writers through the real sender (benchmarks/tracking_load.py) and by a real smoke grid launched
into it. Skipped when not root or PostgreSQL is missing, unless TWM_REQUIRE_POSTGRES=1 (CI: scripts/test.sh),
where that is a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from servers import MlflowServer, Postgres

from twm import run_record as rr
from twm.metric_log import read_points

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
TINY = ["schedule.budget=12000", "schedule.pretrain_budget=3000", "buffer.capacity=1000", "env.time_limit=300",
        "schedule.eval_episodes=1", "schedule.final_eval_episodes=2", "runtime.metrics_every=10"]


@pytest.fixture
def postgres_server(tmp_path):
    reason = Postgres.skip_reason()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        reason = reason or "psycopg is not installed (pip install -e '.[dev]')"
    if reason:
        if os.environ.get("TWM_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " but TWM_REQUIRE_POSTGRES=1")
        pytest.skip(reason)
    database, server = Postgres(), None
    try:
        database.start()
        server = MlflowServer(tmp_path / "server", backend_uri=database.uri).start()
        yield server
    finally:
        if server is not None:
            server.stop()
        database.stop()


def test_concurrent_writers_and_a_real_grid_share_a_postgres_backed_server_without_loss(tmp_path, postgres_server):
    from mlflow.tracking import MlflowClient

    server, record, runs = postgres_server, tmp_path / "record.json", tmp_path / "runs"
    writers = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "tracking_load.py"), "--writers", "16",
                                "--store", "server", "--tracking-uri", server.uri, "--duration-s", "25",
                                "--speedup", "10", "--record", str(record)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    launch = subprocess.run([sys.executable, "-m", "suite.cli", "launch", "smoke", "--games", "Pong", "--seeds", "0",
                             "--runs-dir", str(runs), "--tracking-uri", server.uri,
                             *[arg for item in TINY for arg in ("--set", item)]],
                            capture_output=True, text=True, timeout=600)
    output, _ = writers.communicate(timeout=600)
    assert launch.returncode == 0 and "finished: 1 done" in launch.stdout, launch.stdout + launch.stderr
    assert writers.returncode == 0, output
    (entry,) = json.loads(record.read_text())["entries"]
    assert entry["failed_writers"] == 0 and entry["runs_in_mlflow"] == 16 and entry["runs_not_tagged_done"] == 0
    assert entry["lost_points"] == 0 and entry["duplicate_points"] == 0 and entry["points_logged"] > 16 * 100

    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's artifact destination
    (run,) = client.search_runs([experiment.experiment_id])
    (run_dir,) = runs.glob("smoke/base/Pong/s0-*")
    counts = Counter((k, m.step) for k in run.data.metrics for m in client.get_metric_history(run.info.run_id, k))
    assert max(counts.values()) == 1 and set(counts) == {p.ident for p in read_points(run_dir / rr.METRICS)[0]}
    assert run.data.tags[rr.TAG_STATUS] == rr.STATE_DONE and run.info.status == "FINISHED"
    (artifact,) = (server.home / "artifacts").rglob(rr.FINAL_SCORES)
    assert json.loads(artifact.read_text()) == json.loads((run_dir / rr.FINAL_SCORES).read_text())
