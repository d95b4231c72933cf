"""`twm-suite sync GRID`: bring MLflow up to date from the grid's run directories.

Every trainer appends its metrics to `metrics.jsonl` in its run directory first and keeps what else MLflow
gets in `mlflow_run.json`; its background sender feeds MLflow from there while it runs. `sync` does the
same for every run directory of the grid that no trainer is sending right now: it asks MLflow which
(key, step) points each run already holds and sends only the others, then the tags, the final scores and
the `twm.status` tag. Running it twice sends nothing the second time; a run unchanged since its last
complete sync costs no MLflow call. Every relaunch runs it too. Use it after a tracking outage, for
Slurm grids without a server (their jobs log offline), or to copy a grid into another store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from suite.grids import get_grid
from suite.status import discover
from suite.tracking import ensure_experiment, say_report, sync_runs, tracked, ui_hint
from twm.run_record import MLFLOW_RUN, read_json
from twm.tracking import TrackingError, check_tracking_uri


def add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="grid name (see `twm-suite grids`)")
    parser.add_argument("--runs-dir", type=Path, default=Path("twm-runs"),
                        help="the launch's output folder (default: ./twm-runs)")
    parser.add_argument("--tracking-uri", default="",
                        help="sync into this MLflow store (e.g. a server) instead of each run's own")


def run_sync(args: argparse.Namespace) -> int:
    grid = get_grid(args.grid)
    runs_dir = args.runs_dir.resolve()
    if not runs_dir.is_dir():
        raise TrackingError(f"runs dir {runs_dir} does not exist")
    if args.tracking_uri:
        check_tracking_uri(args.tracking_uri)
    run_dirs = tracked([spec.run_dir(runs_dir) for spec in discover(runs_dir, grid.name, grid.preset)])
    if not run_dirs:
        print(f"no started runs of grid {grid.name} under {runs_dir}: nothing to sync")
        return 0
    targets = [args.tracking_uri] if args.tracking_uri else sorted(
        {read_json(d / MLFLOW_RUN)["tracking_uri"] for d in run_dirs})
    for uri in targets:
        check_tracking_uri(uri)
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).parent.is_dir():
            raise TrackingError(f"tracking store {uri}: its folder does not exist")
    for uri in targets:
        ensure_experiment(uri, grid.name, runs_dir)
    report = sync_runs(run_dirs, args.tracking_uri or None)
    say_report(report, ", ".join(targets), print)
    for uri in targets:
        print(ui_hint(uri, grid.name))
    return 1 if report.failed else 0
