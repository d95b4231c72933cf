"""The run record (twm.run_record) is the one owner of file names, tags, metric names and seed rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from analysis import scores
from twm import run_record as rr


def test_analysis_copy_of_the_names_agrees_with_the_run_record():
    # analysis may not import twm, so it keeps its own copy of the names it reads.
    assert (scores.TAG_GRID, scores.TAG_VARIANT, scores.TAG_GAME, scores.TAG_SEED, scores.TAG_STATUS) == (
        rr.TAG_GRID, rr.TAG_VARIANT, rr.TAG_GAME, rr.TAG_SEED, rr.TAG_STATUS)
    assert scores.STATUS_DONE == rr.STATE_DONE
    assert (scores.METRIC_EVAL, scores.METRIC_FINAL) == (rr.EVAL_RETURN, rr.FINAL_SCORE)
    assert scores.default_tracking_uri("/x").endswith("/" + rr.MLFLOW_DB)


def test_run_record_imports_without_torch_or_mlflow():
    code = "import sys, twm.run_record, suite.rundir; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_seed_rules_follow_the_spec():
    assert rr.train_reset_seed(0) == 7979 and rr.train_reset_seed(4) == 5 * 7979
    assert rr.next_reset_seed(7979) == 3 * 7979 + 13
    assert rr.eval_start_seed(2) == 15 * 7919 + 13
    assert rr.next_eval_seed(100, 8) == 300 + 13 + 8


def test_atomic_write_replaces_whole_files_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / rr.STATUS
    rr.write_json_atomic(path, {"state": "running"}, durable=True)
    rr.write_json_atomic(path, {"state": "done"})
    assert rr.read_json(path) == {"state": "done"}
    assert [p.name for p in tmp_path.iterdir()] == [rr.STATUS]


def test_failed_atomic_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    path = tmp_path / rr.STATUS
    rr.write_json_atomic(path, {"state": "running"})
    with pytest.raises(TypeError):
        rr.write_json_atomic(path, {"bad": object()})  # not JSON: fails before any byte is written
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        rr.write_text_atomic(tmp_path / "folder", "x")  # the rename fails after the write: its temp must go
    assert rr.read_json(path) == {"state": "running"}
    assert not [p for p in tmp_path.iterdir() if rr.is_temp(p)]


def test_read_json_of_a_missing_or_half_written_file_is_none(tmp_path):
    assert rr.read_json(tmp_path / "missing.json") is None
    (tmp_path / "half.json").write_text('{"state": "runn')
    assert rr.read_json(tmp_path / "half.json") is None


def test_run_dir_names_every_file_of_the_layout(tmp_path):
    run = rr.RunDir(tmp_path)
    assert run.status == tmp_path / "status.json" and run.done == tmp_path / "DONE"
    assert run.checkpoints == tmp_path / "checkpoints" and run.metrics == tmp_path / "metrics.jsonl"
