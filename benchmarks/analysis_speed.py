"""Wall-clock of a full `report` for 130 synthetic runs (26 games x 5 seeds) plus six published methods at 50,000 reps.

Usage: PYTHONPATH=. python benchmarks/analysis_speed.py [--reps 50000] [--published DIR]
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

import pandas as pd

from analysis.report import write_report
from analysis.scores import load_experiment, load_score_file
from analysis.synthetic import log_grid

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ["TWM", "IRIS", "SPR", "DrQ_eps", "CURL", "SimPLe"]


def main() -> None:
    """Log the synthetic grid, time the report, print and record the result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=50_000)
    parser.add_argument("--published", type=Path, default=ROOT.parent / "shared" / "reference" / "published_scores")
    parser.add_argument("--record", type=Path, default=ROOT / "results" / "benchmarks" / "analysis_speed.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="analysis_speed_"))
    try:
        uri = f"sqlite:///{work / 'mlflow.db'}"
        t0 = time.perf_counter()
        log_grid(uri, "bench", {"base": 1.0}, seeds=range(5))
        log_s = time.perf_counter() - t0
        baselines = pd.concat([load_score_file(args.published / f"{m}.json") for m in PUBLISHED], ignore_index=True)

        t0 = time.perf_counter()
        exp = load_experiment("bench", uri)
        read_s = time.perf_counter() - t0
        write_report(exp, baselines, work / "report", "benchmarks/analysis_speed.py", str(args.published),
                     reps=args.reps)
        total_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    record = {
        "benchmark": "full report: 130 synthetic runs + 6 published methods",
        "report_wall_clock_s": round(total_s, 2),
        "mlflow_read_s": round(read_s, 2),
        "synthetic_logging_s (not in report time)": round(log_s, 2),
        "reps": args.reps,
        "profile_reps": 2000,
        "runs": len(exp.runs),
        "published_methods": PUBLISHED,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(f"full report, {len(exp.runs)} runs + {len(PUBLISHED)} published methods, {args.reps} reps: "
          f"{total_s:.1f} s (MLflow read {read_s:.1f} s; logging the synthetic runs took {log_s:.1f} s)")
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record written to {args.record}")


if __name__ == "__main__":
    main()
