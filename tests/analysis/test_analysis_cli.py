"""The report and compare entry points, called for real on a real MLflow sqlite store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.__main__ import main
from analysis.synthetic import log_grid

ROOT = Path(__file__).resolve().parents[2]
GAMES = ["Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A two-variant grid on 8 games (an ablation subset) with one missing and one partial run."""
    runs_dir = tmp_path_factory.mktemp("runs") / "twm-runs"
    runs_dir.mkdir()
    log_grid(f"sqlite:///{runs_dir / 'mlflow.db'}", "abl", {"base": 1.0, "uniform_sampling": 0.6},
             games=GAMES, seeds=range(3), skip=[("base", "Breakout", 2)], partial=[("uniform_sampling", "Alien", 1)])
    return runs_dir


def test_report_writes_tables_figures_and_self_contained_html(grid, published, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["report", "abl", "--runs-dir", str(grid), "--baselines", str(published), "--out", str(out),
               "--reps", "2000", "--profile-reps", "200"])
    assert rc == 0
    assert str(out / "report.md") in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "Command: `twm-suite report abl" in md
    assert f"MLflow experiment `abl` at `sqlite:///{grid / 'mlflow.db'}`" in md
    assert "Runs per game (finished): Ours (base): 2–3" in md
    assert "| base | Breakout | 2 |" in md  # missing cell listed
    assert "| uniform_sampling | Alien | 1 | running |" in md  # partial run listed
    assert "P(improve over base)" in md
    for stem in ("table1", "table2", "aggregates", "ablation_aggregates", "ablation_per_game", "runs_per_game"):
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{stem}.{ext}").stat().st_size > 0
    for stem in ("fig3_aggregates", "fig4_profiles", "sample_efficiency", "ablation_uniform_sampling"):
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "<img" in page and "src='figures" not in page
    assert "Figure 7" in page


def test_report_without_baselines_uses_paper_means_flagged_without_cis(grid, tmp_path):
    out = tmp_path / "paper"
    assert main(["report", "abl", "--runs-dir", str(grid), "--out", str(out), "--reps", "500",
                 "--profile-reps", "100"]) == 0
    md = (out / "report.md").read_text()
    assert "paper Table 1 per-game means" in md
    assert "TWM (paper): per-game means only, no CIs." in md


def test_report_on_unknown_or_empty_grid_names_it(grid, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    assert main(["report", "nogrid", "--runs-dir", str(grid), "--out", str(tmp_path)]) == 2
    assert "experiment 'nogrid' not found" in capsys.readouterr().err
    MlflowClient(tracking_uri=f"sqlite:///{grid / 'mlflow.db'}").create_experiment("empty_grid")
    assert main(["report", "empty_grid", "--runs-dir", str(grid), "--out", str(tmp_path)]) == 2
    assert "'empty_grid'" in capsys.readouterr().err and not (tmp_path / "report.md").exists()


def test_compare_json_for_files_and_mlflow(grid, published):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis", "compare", f"TWM={published / 'TWM.json'}", "ours=mlflow:abl",
         "--tracking-uri", f"sqlite:///{grid / 'mlflow.db'}", "--format", "json", "--reps", "1000"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    # compare aggregates over the 26 games; the 8-game grid must be named with what it lacks
    assert proc.returncode == 2, proc.stderr
    assert "ours/base" in proc.stderr and "no runs for game(s) ChopperCommand" in proc.stderr


def test_compare_json_matches_the_paper(published, capsys):
    assert main(["compare", f"TWM={published / 'TWM.json'}", f"SPR={published / 'SPR.json'}", "--format", "json",
                 "--reps", "2000", "--seed", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["TWM"]) >= {"median", "iqm", "mean", "optimality_gap"}
    assert round(result["TWM"]["mean"]["point"], 3) == 0.956
    assert round(result["TWM"]["median"]["point"], 3) == 0.505
    for metric in ("median", "iqm", "mean", "optimality_gap"):
        cell = result["SPR"][metric]
        assert cell["lo"] <= cell["point"] <= cell["hi"]
    assert main(["compare", f"TWM={published / 'TWM.json'}", "--format", "json", "--reps", "2000",
                 "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["TWM"] == result["TWM"]


def test_compare_table_and_bad_specs(published, tmp_path, capsys):
    assert main(["compare", f"TWM={published / 'TWM.json'}", "--reps", "500"]) == 0
    assert "0.956" in capsys.readouterr().out
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps({"Breakout": [1.0], "Brekout": [2.0]}))
    assert main(["compare", f"x={bad}"]) == 2
    assert "typo.json" in capsys.readouterr().err
    assert main(["compare", "no-equals-sign"]) == 2


def test_analysis_imports_without_torch():
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'twm'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import analysis.cli, analysis.report, analysis.stats, analysis.scores, analysis.__main__\n"
        "assert 'torch' not in sys.modules and 'twm' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
