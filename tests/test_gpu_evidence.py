"""benchmarks/gpu_evidence.py on a CPU: the dry-run plan and its budgets, one-line errors on bad input, the
summary's choice of variant and its account of where the time goes, junit parsing of a real pytest run,
unpacking a bundle, and one real stage end to end (the CUDA tests, which skip here)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_evidence.py"
spec = importlib.util.spec_from_file_location("gpu_evidence", SCRIPT)
ge = importlib.util.module_from_spec(spec)
sys.modules["gpu_evidence"] = ge  # dataclasses look their module up by name
spec.loader.exec_module(ge)


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.mark.parametrize("budget", [540, 300])
def test_dry_run_plans_every_stage_within_the_budget(budget):
    done = run("--dry-run", "--budget", str(budget))
    assert done.returncode == 0, done.stderr
    rows = {m[1]: float(m[2]) for m in re.finditer(r"^(\w+(?: stages)?)\s+(\d+)\s{2}", done.stdout, re.M)}
    assert set(rows) == {s.name for s in ge.STAGES} | {"core stages"}
    core = sum(rows[s.name] for s in ge.STAGES if not s.optional)
    assert core + ge.SUMMARY_RESERVE_S <= budget and abs(core - rows["core stages"]) <= len(ge.STAGES)
    for name in ("throughput_cuda.json", "throughput_cuda_graphs.json", "packing_cuda.json", "boxing_run_cuda.json",
                 "metrics.projected_full_run_hours", "metrics.host_syncs_per_iteration", "schema ok"):
        assert name in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--budget", "5", "--out", "x"], "--budget must be between 30 and 3600"),
    (["--stages", "throughput_fp32,warp", "--out", "x"], "unknown stage(s) warp"),
    ([], "--out DIR is required"),
    (["--unpack", "/nonexistent/bundle.json"], "no bundle at"),
])
def test_bad_input_is_a_one_line_error_with_exit_code_2_and_creates_nothing(tmp_path, args, message):
    args = [str(tmp_path / "out") if a == "x" else a for a in args]
    done = run(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("gpu_evidence: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def throughput_record(variant: str, hours: float, within: bool | None, iteration: dict, complete: bool = True):
    record = {"benchmark": "TWM training throughput", "variant": variant, "device": "GPU", "torch": "2.x",
              "complete": complete, "paper_size_iteration_ms_by_phase": iteration,
              "projected_run_hours_by_phase": {"pretraining": 0.2 * hours, "main loop": 0.7 * hours,
                                               "collection": 0.05 * hours, "evaluation": 0.05 * hours},
              "metrics": {"projected_full_run_hours": hours, "wm_train_samples_per_s": 1600 / iteration[
                  "world model update"] * 1e3, "imagination_samples_per_s": 6000 / iteration["imagination"] * 1e3,
                          "train_iteration_ms": sum(iteration.values())}}
    if within is not None:
        record["drift_against_fp32"] = {"within_limits": within}
    return record


def context(records: dict) -> "ge.Context":
    args = ge.parse_args(["--out", "unused", "--tiny"])
    ctx = ge.Context(args, Path("."), Path("."), 0.0, 1.0)
    ctx.records.update(records)
    return ctx


def test_summary_picks_the_fastest_variant_within_its_drift_limits_and_names_where_the_time_goes():
    slow = {"world model update": 30.0, "imagination": 50.0, "actor-critic update": 5.0}
    fast = {"world model update": 20.0, "imagination": 12.0, "actor-critic update": 3.0}
    ctx = context({"throughput_cuda.json": throughput_record("fp32", 3.0, None, slow),
                   "throughput_cuda_bf16.json": throughput_record("bf16", 0.5, False, fast),  # fastest, drifts
                   "throughput_cuda_graphs.json": throughput_record("graphs", 1.4, True, fast),
                   "throughput_cuda_compile.json": throughput_record("compile", 0.9, True, fast, complete=False)})
    summary = ge.summarize(ctx)
    assert summary["best_variant"] == "graphs" and summary["projected_full_run_hours"] == 1.4
    assert not summary["goals"]["projected_full_run_hours"]["met"]
    assert not summary["goals"]["wm_train_samples_per_s"]["met"]  # 80,000 samples/s
    assert summary["goals"]["imagination_samples_per_s"]["met"]  # 500,000 samples/s
    where = " | ".join(summary["where_the_time_goes"])
    assert where.startswith("run hours: main loop 0.98 h (70%)")
    assert "world model update 20.0 ms (57%)" in where and "the goal needs <= 10.67 ms" in where
    assert "imagination (sequential" not in where  # a met goal is not explained
    assert summary["variants"]["fp32"]["missing"] == []  # fp32 needs no drift record; CPU: no launch counts
    assert "drift_against_fp32.world_model_pass" in summary["variants"]["graphs"]["missing"]


def test_junit_results_count_a_real_pytest_run(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n    assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='no device')\ndef test_later():\n    pass\n")
    xml = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    str(tmp_path / "test_sample.py")], capture_output=True, cwd=tmp_path)
    results = ge.junit_results(xml)
    assert (results["passed"], results["failed"], results["skipped"]) == (1, 1, 1)
    assert results["tests"]["test_sample::test_bad"]["outcome"] == "failed"
    assert "one is not two" in results["tests"]["test_sample::test_bad"]["message"]
    assert results["tests"]["test_sample::test_later"]["message"].endswith("no device")


def test_unpack_writes_every_record_of_a_bundle(tmp_path):
    records = {"throughput_cuda.json": {"a": 1}, "packing_cuda.json": {"b": [1, 2]}}
    bundle = tmp_path / ge.BUNDLE
    bundle.write_text(json.dumps({"format": 1, "records": records, "stages": []}))
    done = run("--unpack", str(bundle), "--into", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    for name, record in records.items():
        assert json.loads((tmp_path / "results" / name).read_text()) == record


@pytest.mark.slow
def test_one_real_stage_writes_the_bundle_summary_and_log(tmp_path):
    """install + cuda_tests for real (the CUDA tests skip on a CPU): the stage runner, pytest under a budget, the
    junit record and the summary files."""
    done = run("--tiny", "--stages", "cuda_tests", "--budget", "120", "--out", str(tmp_path / "out"),
               "--work", str(tmp_path / "work"), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([ge.BUNDLE, ge.SUMMARY, ge.LOG])
    bundle = json.loads((out / ge.BUNDLE).read_text())
    tests = bundle["records"]["cuda_tests_cpu.json"]
    assert tests["failed"] == 0 and tests["skipped"] >= 8 and tests["passed"] == 0
    assert all(t["message"].endswith("CUDA device") or "CUDA" in t["message"] for t in tests["tests"].values())
    summary = json.loads((out / ge.SUMMARY).read_text())
    assert [s["name"] for s in summary["stages"]] == ["install", "cuda_tests"]
    assert ge.missing_keys(summary, ge.SUMMARY_KEYS) == []
    assert "=== GPU evidence" in done.stdout and "cuda_tests" in (out / ge.LOG).read_text()
