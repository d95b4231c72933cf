"""Speed of the analysis: a 9-method `compare` at 50,000 reps against plain rliable in the same run, and a full report.

1. compare: TWM, IRIS, STORM, DreamerV3, DIAMOND, REM (5 runs per game) and SPR, DrQ_eps, CURL (100 runs) from
   the score ledger; ours is `analysis.cli.compare` at --reps; plain rliable is `get_interval_estimates` with
   the four aggregates in one function (rliable's README usage), one method at a time, at --rliable-reps
   (default: the same 50,000; fewer are scaled linearly to --reps, its cost being one resample and one
   evaluation per rep). At --rliable-reps both also run from the same streams and their intervals are compared.
2. report: 130 synthetic MLflow runs (26 games x 5 seeds) and the default ledger baselines at --reps.

Usage: PYTHONPATH=. python benchmarks/analysis_speed.py [--reps 50000] [--rliable-reps 2000] [--no-report]
Prints the figures and writes results/benchmarks/analysis_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rliable import library as rly
from rliable import metrics

from analysis import ATARI_100K_GAMES, baselines, cli, stats
from analysis.scores import hns_matrix

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["TWM", "IRIS", "STORM", "DreamerV3", "DIAMOND", "REM", "SPR", "DrQ_eps", "CURL"]


def _rliable_aggregates(x: np.ndarray) -> np.ndarray:
    return np.array([metrics.aggregate_median(x), metrics.aggregate_iqm(x), metrics.aggregate_mean(x),
                     metrics.aggregate_optimality_gap(x)])


def compare_benchmark(reps: int, rliable_reps: int) -> dict:
    """Ours (end to end, per method) vs plain rliable on the same 9 HNS matrices."""
    hns = {name: hns_matrix(baselines.load(name), where=name) for name in METHODS}
    t0 = time.perf_counter()
    cli.method_result("TWM", hns["TWM"], 10, 0)  # loads the compiled kernels (numba's on-disk cache)
    warm_s = time.perf_counter() - t0

    ours, rliable, diffs = {}, {}, {}
    t0 = time.perf_counter()
    result = cli.compare(hns, [], reps, 0, ATARI_100K_GAMES)
    ours_total = time.perf_counter() - t0
    for name, m in hns.items():
        t0 = time.perf_counter()
        cli.method_result(name, m, reps, 0)
        ours[name] = time.perf_counter() - t0
        seed = stats.stream_seed(name, 0)
        np.random.seed(seed)
        t0 = time.perf_counter()
        _, ci = rly.get_interval_estimates({name: m}, _rliable_aggregates, reps=rliable_reps)
        rliable[name] = (time.perf_counter() - t0) * reps / rliable_reps
        small = stats.aggregate_intervals(m, reps=rliable_reps, seed=seed)
        diffs[name] = float(max(abs(small[k].lo - ci[name][0, i]) + abs(small[k].hi - ci[name][1, i])
                                for i, k in enumerate(stats.METRICS)))
        print(f"{name:>10} ({m.shape[0]:3d} runs): ours {ours[name]:6.2f} s, rliable {rliable[name]:7.1f} s "
              f"(measured at {rliable_reps} reps): {rliable[name] / ours[name]:5.1f}x")

    def group(runs: int) -> dict:
        names = [n for n in METHODS if hns[n].shape[0] == runs]
        o, r = sum(ours[n] for n in names), sum(rliable[n] for n in names)
        return {"methods": names, "ours_s": round(o, 3), "rliable_s": round(r, 2), "ratio": round(r / o, 1)}

    rliable_total = sum(rliable.values())
    return {
        "methods": METHODS, "reps": reps, "rliable_measured_reps": rliable_reps,
        "rliable_note": (f"plain rliable measured at {rliable_reps} reps per method" + (
            "" if rliable_reps == reps else f", scaled linearly to {reps}")),
        "ours_compare_s": round(ours_total, 3), "rliable_s": round(rliable_total, 1),
        "ratio": round(rliable_total / ours_total, 1),
        "ours_kernel_load_s (first call in a process, not in the figures above)": round(warm_s, 2),
        "by_runs_per_game": {"5": group(5), "100": group(100)},
        "per_method_s": {n: {"ours": round(ours[n], 3), "rliable": round(rliable[n], 2)} for n in METHODS},
        f"max_abs_ci_difference_vs_rliable_at_{rliable_reps}_reps": max(diffs.values()),
        "twm_mean": result["methods"]["TWM"]["mean"],
    }


def report_benchmark(reps: int) -> dict:
    """Wall-clock of a full report on 130 synthetic runs with the default ledger baselines."""
    from analysis.report import write_report
    from analysis.scores import load_experiment
    from analysis.synthetic import log_grid

    work = Path(tempfile.mkdtemp(prefix="analysis_speed_"))
    try:
        uri = f"sqlite:///{work / 'mlflow.db'}"
        t0 = time.perf_counter()
        log_grid(uri, "atari100k", {"base": 1.0}, seeds=range(5))
        log_s = time.perf_counter() - t0
        base = {name: baselines.load(name) for name in baselines.DEFAULT_REPORT_BASELINES}
        t0 = time.perf_counter()
        exp = load_experiment("atari100k", uri)
        read_s = time.perf_counter() - t0
        write_report(exp, base, work / "report", "benchmarks/analysis_speed.py", "ledger", reps=reps)
        total_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"full report, {len(exp.runs)} runs + {len(base)} ledger baselines, {reps} reps: {total_s:.1f} s "
          f"(MLflow read {read_s:.1f} s; logging the synthetic runs took {log_s:.1f} s)")
    return {"benchmark": f"full report: 130 synthetic runs + {len(base)} ledger baselines",
            "baselines": list(base), "report_wall_clock_s": round(total_s, 2), "mlflow_read_s": round(read_s, 2),
            "synthetic_logging_s (not in report time)": round(log_s, 2), "reps": reps,
            "profile_reps": stats.DEFAULT_PROFILE_REPS, "runs": len(exp.runs)}


def main() -> None:
    """Run both benchmarks, print and record the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=stats.DEFAULT_REPS)
    parser.add_argument("--rliable-reps", type=int, default=stats.DEFAULT_REPS)
    parser.add_argument("--no-report", action="store_true", help="only the compare benchmark")
    parser.add_argument("--record", type=Path, default=ROOT / "results" / "benchmarks" / "analysis_speed.json")
    args = parser.parse_args()

    record = {"compare": compare_benchmark(args.reps, args.rliable_reps)}
    c = record["compare"]
    groups = c["by_runs_per_game"]
    print(f"9-method compare at {args.reps} reps: ours {c['ours_compare_s']:.2f} s, plain rliable "
          f"{c['rliable_s']:.1f} s -> {c['ratio']}x (5-run methods {groups['5']['ratio']}x, 100-run methods "
          f"{groups['100']['ratio']}x)")
    if not args.no_report:
        record["report"] = report_benchmark(args.reps)
    record["machine"] = {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
                         "platform": platform.platform(), "python": platform.python_version(),
                         "processor": platform.processor() or platform.machine()}
    record["timestamp"] = datetime.now(UTC).isoformat(timespec="seconds")
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record written to {args.record}")


if __name__ == "__main__":
    main()
