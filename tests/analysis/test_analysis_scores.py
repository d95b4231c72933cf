"""Reading score files and MLflow experiments into the tidy table, with clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import AnalysisError
from analysis.scores import (
    TIDY_COLUMNS,
    hns_matrix,
    load_experiment,
    load_score_file,
)
from analysis.synthetic import log_grid


def test_score_file_becomes_tidy_with_hns(published):
    tidy = load_score_file(published / "TWM.json")
    assert list(tidy.columns) == TIDY_COLUMNS
    assert len(tidy) == 26 * 5
    row = tidy[(tidy.game == "Pong") & (tidy.seed == 0)].iloc[0]
    assert row.hns == pytest.approx((19.75 + 20.7) / (14.6 + 20.7))


def test_wrong_game_name_is_named_with_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Breakout": [1.0], "PacMan": [2.0]}))
    with pytest.raises(AnalysisError, match=r"bad\.json.*'PacMan'.*MsPacman"):
        load_score_file(bad)


def test_game_missing_for_some_runs_names_game_and_seeds(published, tmp_path):
    data = json.loads((published / "TWM.json").read_text())
    data["Qbert"] = data["Qbert"][:3]
    path = tmp_path / "short.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AnalysisError, match=r"short.*'Qbert' has 3 runs.*missing seed\(s\) \[3, 4\]"):
        hns_matrix(load_score_file(path), where="short")


def test_missing_game_is_named(published, tmp_path):
    data = json.loads((published / "TWM.json").read_text())
    del data["Hero"]
    path = tmp_path / "nohero.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AnalysisError, match="no runs for game.*Hero"):
        hns_matrix(load_score_file(path), where="nohero")


@pytest.mark.parametrize(("text", "shown"), [
    ('{"Pong": [1.0, NaN]}', '"NaN"'), ('{"Pong": [1.0, Infinity]}', '"Infinity"'), ('{"Pong": [null]}', "null"),
    ('{"Pong": [1.0, "12"]}', '"12"'), ('{"Pong": [true]}', "true"),
])
def test_a_score_that_is_not_a_finite_number_is_named_with_its_game_and_run(tmp_path, text, shown):
    path = tmp_path / "bad.json"
    path.write_text(text)
    run = 1 if text.count(",") else 0
    message = rf"bad\.json: game 'Pong', run {run}: score {shown} is not a finite number"
    with pytest.raises(AnalysisError, match=message):
        load_score_file(path)


def test_a_game_outside_the_26_is_named_as_such_not_as_a_typo(tmp_path):
    path = tmp_path / "a57.json"
    path.write_text(json.dumps({"Asteroids": [1.0]}))
    with pytest.raises(AnalysisError, match="'Asteroids' is an Atari game but not one of the 26 Atari 100k games"):
        load_score_file(path)


def test_mlflow_experiment_reads_finished_and_lists_partial_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_grid(uri, "g", {"base": 1.0}, games=["Breakout", "Pong"], seeds=range(2), partial=[("base", "Pong", 1)])
    exp = load_experiment("g", uri)
    assert set(exp.tidy["game"]) == {"Breakout", "Pong"}
    assert len(exp.runs) == 4
    assert exp.partial[["game", "seed"]].values.tolist() == [["Pong", 1]]
    assert exp.tidy.groupby(["game", "seed"]).size().to_dict() == {("Breakout", 0): 20, ("Breakout", 1): 20,
                                                                   ("Pong", 0): 20}
    assert exp.tidy["env_step"].max() == 100_000
    final = exp.tidy[exp.tidy.env_step == 100_000]
    assert np.all(np.isfinite(final["hns"]))


def test_empty_and_unknown_experiments_are_named(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("empty")
    with pytest.raises(AnalysisError, match="experiment 'empty'.*has no runs"):
        load_experiment("empty", uri)
    with pytest.raises(AnalysisError, match="experiment 'nope' not found.*empty"):
        load_experiment("nope", uri)
    with pytest.raises(AnalysisError, match="does not exist"):
        load_experiment("x", f"sqlite:///{tmp_path / 'absent.db'}")
