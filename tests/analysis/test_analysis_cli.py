"""The report, compare and baselines verbs, called for real on a real MLflow sqlite store and the shipped ledger."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics

from analysis import baselines, stats
from analysis.__main__ import main
from analysis.scores import hns_matrix
from analysis.synthetic import log_grid

ROOT = Path(__file__).resolve().parents[2]
GRID = "ablation-uniform-sampling"  # a shipped grid: its report labels come from suite/grids.json
GRID_GAMES = ["Breakout", "KungFuMaster", "Pong"]


def _strict(text: str) -> dict:
    def no_constant(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constant)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A two-variant ablation grid (one missing, one partial run) and a 2-game smoke grid in one store."""
    runs = tmp_path_factory.mktemp("runs") / "twm-runs"
    runs.mkdir()
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    log_grid(uri, GRID, {"base": 1.0, "uniform": 0.6}, games=GRID_GAMES, seeds=range(3),
             skip=[("base", "Breakout", 2)], partial=[("uniform", "Pong", 1)])
    log_grid(uri, "smoke", {"base": 0.2}, games=["Pong", "Breakout"], seeds=range(2))
    log_grid(uri, "ablation-vanilla-transformer", {"base": 1.0, "vanilla": 1.0}, games=["Pong"], seeds=[0])
    return runs


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twm-suite: error: "), captured.err
    assert captured.out == ""
    return lines[0]


# ----------------------------------------------------------------------------- report


def test_report_writes_tables_figures_and_self_contained_html_under_the_runs_dir(runs_dir, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    rc = main(["report", GRID, "--runs-dir", str(runs_dir), "--baselines", "TWM,EfficientZero,SPR", "--reps", "500",
               "--profile-reps", "100"])
    assert rc == 0
    out = runs_dir / GRID / "report"
    assert str(out / "report.md") in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    md = (out / "report.md").read_text()
    assert f"Command: `twm-suite report {GRID} --baselines TWM,EfficientZero,SPR" in md
    assert f"MLflow experiment `{GRID}` at `sqlite:///{runs_dir / 'mlflow.db'}`" in md
    assert "| base | Breakout | 2 |" in md  # missing cell listed
    assert "| uniform | Pong | 1 | running |" in md  # partial run listed
    assert "P(improve over base)" in md and "P(Ours (base) > row)" in md
    assert "EfficientZero: per-game means only (1 run per game)" in md
    assert "| Normalized Median | 0.000 | 1.000 | 0.189 | 0.092 | 0.313 | 0.396 | 0.134 | **0.505** |" in md
    for stem in ("table1", "table2", "aggregates", "ablation_aggregates", "ablation_per_game", "runs_per_game"):
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{stem}.{ext}").stat().st_size > 0
        assert (out / "tables" / f"{stem}.tex").read_text().isascii()
    for stem in ("fig3_aggregates", "fig4_profiles", "probability_of_improvement", "sample_efficiency",
                 "ablation_uniform"):
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "src='figures" not in page
    assert "Figure 7 (balanced vs uniform sampling): base vs uniform" in page
    assert f"<code>twm-suite report {GRID}" in page and "`" not in page


def test_report_compares_with_the_default_ledger_set(runs_dir, tmp_path):
    out = tmp_path / "default"
    assert main(["report", "smoke", "--runs-dir", str(runs_dir), "--out", str(out), "--reps", "200",
                 "--profile-reps", "50"]) == 0
    md = (out / "report.md").read_text()
    assert f"score ledger entries {', '.join(baselines.DEFAULT_REPORT_BASELINES)}" in md
    assert "on 2 games (Breakout, Pong)" in md


def test_report_of_a_one_seed_grid_has_no_intervals_and_its_papers_label(runs_dir, tmp_path):
    out = tmp_path / "vanilla"
    assert main(["report", "ablation-vanilla-transformer", "--runs-dir", str(runs_dir), "--out", str(out),
                 "--baselines", "TWM", "--reps", "200", "--profile-reps", "50"]) == 0
    md = (out / "report.md").read_text()
    assert "Ours (base), Ours (vanilla): per-game means only (1 run per game)" in md
    assert "Runtime comparison, Appendix A.1 (Transformer-XL memory vs vanilla transformer): base vs vanilla" in md
    assert not (out / "figures" / "probability_of_improvement.png").exists()


def test_report_on_unknown_or_empty_grid_names_it(runs_dir, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    assert main(["report", "nogrid", "--runs-dir", str(runs_dir), "--out", str(tmp_path)]) == 2
    assert "experiment 'nogrid' not found" in _one_line_error(capsys)
    MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}").create_experiment("empty_grid")
    assert main(["report", "empty_grid", "--runs-dir", str(runs_dir), "--out", str(tmp_path)]) == 2
    assert "'empty_grid'" in _one_line_error(capsys) and not (tmp_path / "report.md").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_report_and_compare_fail_fast_on_a_stopped_tracking_server(tmp_path, capsys):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["report", "smoke", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    assert f"MLflow tracking server {uri} is not reachable" in _one_line_error(capsys)
    assert main(["compare", "TWM", "ours=mlflow:smoke", "--tracking-uri", uri]) == 2
    assert f"MLflow tracking server {uri} is not reachable" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_compare_times_out_within_10_s_on_a_server_that_never_answers():
    with socket.socket() as silent:  # accepts connections (backlog) but never answers a request
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "suite.cli", "compare", "ours=mlflow:smoke", "--tracking-uri",
                               uri], capture_output=True, text=True, cwd=ROOT, timeout=10)
        elapsed = time.monotonic() - start
    assert proc.returncode == 2 and elapsed < 10
    assert proc.stderr.strip().splitlines() == [f"twm-suite: error: MLflow tracking server {uri} is not reachable "
                                                "(timed out)"]


# ----------------------------------------------------------------------------- compare


def test_compare_ledger_names_without_paths_gives_strict_json_equal_to_rliable(capsys):
    names = ["TWM", "STORM", "DreamerV3", "DIAMOND", "REM"]
    assert main(["compare", *names, "--format", "json", "--reps", "300"]) == 0
    result = _strict(capsys.readouterr().out)
    assert list(result["methods"]) == names and result["reps"] == 300
    for name in names:
        hns = hns_matrix(baselines.load(name))
        np.random.seed(stats.stream_seed(name, 0))
        point, ci = rly.get_interval_estimates(
            {name: hns}, lambda x: np.array([metrics.aggregate_median(x), metrics.aggregate_iqm(x),
                                             metrics.aggregate_mean(x), metrics.aggregate_optimality_gap(x)]),
            reps=300)
        got = result["methods"][name]
        assert got["stream_seed"] == stats.stream_seed(name, 0)
        for i, metric in enumerate(stats.METRICS):
            assert got[metric]["point"] == point[name][i]
            np.testing.assert_allclose([got[metric]["lo"], got[metric]["hi"]], ci[name][:, i], rtol=0, atol=1e-15)
    assert round(result["methods"]["TWM"]["mean"]["point"], 3) == 0.956


def test_compare_marks_per_game_means_and_prints_no_intervals_for_them(capsys):
    assert main(["compare", "TWM", "EfficientZero", "--format", "json", "--reps", "200"]) == 0
    ez = _strict(capsys.readouterr().out)["methods"]["EfficientZero"]
    assert ez["per_game_means"] and ez["runs"] == 1 and ez["iqm"] is None and ez["optimality_gap"] is None
    assert ez["median"] == {"point": pytest.approx(1.090, abs=5e-4), "lo": None, "hi": None}
    assert main(["compare", "TWM", "EfficientZero", "--reps", "200"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("EfficientZero"))
    assert row.split()[1:] == ["1", "1.090", "n/a", "1.943", "n/a", "14"]
    assert "EfficientZero: per-game means (1 run per game), no CIs, IQM and optimality gap n/a" in table


def test_adding_or_reordering_methods_leaves_each_methods_cis_unchanged(capsys):
    assert main(["compare", "TWM", "IRIS", "--format", "json", "--reps", "1000"]) == 0
    alone = _strict(capsys.readouterr().out)["methods"]
    assert main(["compare", "SPR", "IRIS", "STORM", "TWM", "--format", "json", "--reps", "1000"]) == 0
    more = _strict(capsys.readouterr().out)["methods"]
    assert more["TWM"] == alone["TWM"] and more["IRIS"] == alone["IRIS"]


def test_default_reps_reach_the_cli(capsys):
    assert main(["compare", "SimPLe", "--format", "json"]) == 0
    result = _strict(capsys.readouterr().out)
    assert result["reps"] == stats.DEFAULT_REPS == 50_000
    ivs = stats.aggregate_intervals(hns_matrix(baselines.load("SimPLe")), reps=50_000,
                                    seed=stats.stream_seed("SimPLe", 0))
    assert {m: result["methods"]["SimPLe"][m] for m in stats.METRICS} == {m: ivs[m].as_dict() for m in stats.METRICS}


def test_compare_probability_of_improvement_and_its_figures(tmp_path, capsys):
    figs = tmp_path / "figs"
    assert main(["compare", "TWM", "STORM", "SPR", "--poi", "TWM,STORM", "--poi", "SPR,TWM", "--figures", str(figs),
                 "--format", "json", "--reps", "300", "--profile-reps", "50"]) == 0
    pois = _strict(capsys.readouterr().out)["probability_of_improvement"]
    assert [(p["x"], p["y"]) for p in pois] == [("TWM", "STORM"), ("SPR", "TWM")]
    twm, storm = hns_matrix(baselines.load("TWM")), hns_matrix(baselines.load("STORM"))
    iv = stats.probability_of_improvement(twm, storm, reps=300, seed=stats.stream_seed("P(TWM > STORM)", 0))
    assert (pois[0]["point"], pois[0]["lo"], pois[0]["hi"]) == (iv.point, iv.lo, iv.hi)
    assert sorted(p.name for p in figs.iterdir()) == sorted(
        f"{s}.{e}" for s in ("aggregates", "profiles", "probability_of_improvement") for e in ("png", "svg"))


def test_compare_accepts_a_partial_grid_with_games(runs_dir, capsys):
    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    assert main(["compare", "ours=mlflow:smoke", "TWM", "--tracking-uri", uri, "--reps", "200"]) == 2
    assert "ours: no runs for game(s) Alien" in _one_line_error(capsys)
    assert main(["compare", "ours=mlflow:smoke", "TWM", "--tracking-uri", uri, "--games", "Pong,Breakout",
                 "--format", "json", "--reps", "200"]) == 0
    result = _strict(capsys.readouterr().out)
    assert result["games"] == ["Breakout", "Pong"] and result["methods"]["ours"]["runs"] == 2


# case -> (arguments, or the text of a score file given as x=FILE; the expected message)
BAD_INPUTS: dict[str, tuple[list[str] | str, str]] = {
    "duplicate name": (["TWM", "TWM"], "the method name 'TWM' is given twice"),
    "file named like a ledger entry": (["TWM=" + str(baselines.get("IRIS").path)],
                                       "the name 'TWM' is the score-ledger entry TWM"),
    "unknown entry": (["Dreamer"], "'Dreamer' is not in the score ledger"),
    "NaN score": ('{"Pong": [1.0, NaN]}', "game 'Pong', run 1: score \"NaN\" is not a finite number"),
    "inf score": ('{"Pong": [-Infinity]}', "game 'Pong', run 0: score \"-Infinity\" is not a finite number"),
    "null score": ('{"Pong": [null]}', "game 'Pong', run 0: score null is not a finite number"),
    "string score": ('{"Pong": ["9"]}', "game 'Pong', run 0: score \"9\" is not a finite number"),
    "game outside the 26": ('{"Asteroids": [1.0]}', "'Asteroids' is an Atari game but not one of the 26"),
    "typo": ('{"Brekout": [1.0]}', "(did you mean 'Breakout'?)"),
    "reps 0": (["TWM", "--reps", "0"], "--reps must be at least 1, got 0"),
    "reps negative": (["TWM", "--reps", "-5"], "--reps must be at least 1, got -5"),
    "seed negative": (["TWM", "--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    "games outside the 26": (["TWM", "--games", "Pong,Asteroids"], "--games: 'Asteroids' is an Atari game"),
    "poi syntax": (["TWM", "IRIS", "--poi", "TWM"], "--poi 'TWM' is not A,B"),
    "poi unknown": (["TWM", "IRIS", "--poi", "TWM,STORM"], "'STORM' is not one of the compared methods"),
    "poi per-game means": (["TWM", "MuZero", "--poi", "TWM,MuZero"], "MuZero has per-game means only"),
    "empty name": (["=x.json", "TWM"], "'=x.json' is not NAME, NAME=PATH or NAME=mlflow:EXPERIMENT"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_compare_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    given, expected = BAD_INPUTS[case]
    if isinstance(given, str):
        (tmp_path / "scores.json").write_text(given)
        given = [f"x={tmp_path / 'scores.json'}"]
    assert main(["compare", *given] + ([] if "--reps" in given else ["--reps", "10"])) == 2
    assert expected in _one_line_error(capsys)


def test_argparse_errors_of_the_delegated_verbs_are_one_line():
    for argv in (["compare", "TWM", "--reps", "abc"], ["report"], ["baselines", "--format", "xml"]):
        proc = subprocess.run([sys.executable, "-m", "suite.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                              timeout=60)
        assert proc.returncode == 2 and proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"twm-suite: error: twm-suite {argv[0]}: "), proc.stderr


# ----------------------------------------------------------------------------- baselines


def test_baselines_lists_the_ledger_with_runs_and_provenance(capsys):
    # through the suite CLI in its own process: `twm-suite baselines` is a delegated verb
    proc = subprocess.run([sys.executable, "-m", "suite.cli", "baselines", "--format", "json"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=True)
    rows = {r["name"]: r for r in _strict(proc.stdout)}
    assert sorted(rows) == sorted(baselines.names()) and len(rows) == 13
    assert (rows["BBF"]["runs_used"], rows["BBF"]["runs_in_file"]) == (52, "52–60")
    assert rows["EfficientZero"]["per_game_means"] and rows["SPR"]["runs_used"] == 100
    assert round(rows["TWM"]["mean"], 3) == 0.956 and "jrobine/twm" in rows["TWM"]["source"]
    assert main(["baselines", "-v"]) == 0
    text = capsys.readouterr().out
    assert "the first 52 of 52–60 runs of each game" in text and "Freeway" in text


def test_analysis_imports_without_torch():
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'twm'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import analysis.cli, analysis.report, analysis.stats, analysis.scores, analysis.baselines, analysis.__main__\n"
        "analysis.report.shipped_grids()\n"
        "assert 'torch' not in sys.modules and 'twm' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
