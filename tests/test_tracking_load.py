"""Concurrent runs into the local executor's default store (one sqlite file in the runs dir): the real
writers of benchmarks/tracking_load.py (the trainer's tracking code, one process each), fewer and faster than
the benchmark's 130 at a paper run's cadence: no failed run, no lost or duplicate point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_concurrent_writers_into_the_default_sqlite_store_lose_nothing(tmp_path):
    record = tmp_path / "record.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tracking_load.py"), "--writers", "16",
                             "--store", "sqlite", "--duration-s", "12", "--speedup", "10", "--record", str(record)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (entry,) = json.loads(record.read_text())["entries"]
    assert entry["failed_writers"] == 0 and entry["writer_errors"] == []
    assert entry["runs_in_mlflow"] == 16 and entry["runs_not_tagged_done"] == 0
    assert entry["points_logged"] >= 16 * 5 * 27 and entry["points_in_mlflow"] == entry["points_logged"]
    assert entry["lost_points"] == 0 and entry["duplicate_points"] == 0 and entry["unexpected_points"] == 0
