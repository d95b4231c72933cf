"""The `report` and `compare` verbs: argument definitions and runners.

Registered by the suite CLI (`twm-suite report|compare`) and by `python -m analysis`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from analysis import ATARI_100K_GAMES, AnalysisError, stats
from analysis.scores import (
    default_tracking_uri,
    hns_matrix,
    load_baselines,
    load_experiment,
    load_score_file,
    paper_table1_baselines,
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baselines", type=Path, default=None,
                        help="folder of published {game: [score per run]} JSON files (default: the paper's "
                             "Table 1 per-game means, no CIs)")
    parser.add_argument("--runs-dir", type=Path, default=Path("twm-runs"),
                        help="suite output folder holding mlflow.db (default: twm-runs)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db)")
    parser.add_argument("--reps", type=int, default=stats.DEFAULT_REPS, help="bootstrap replications (50000)")
    parser.add_argument("--seed", type=int, default=stats.DEFAULT_SEED, help="bootstrap seed (0)")


def _tracking_uri(args: argparse.Namespace) -> str:
    return args.tracking_uri or default_tracking_uri(args.runs_dir)


def _report_command(args: argparse.Namespace, out: Path) -> str:
    """The full command line that reproduces this report (every option spelled out)."""
    parts = ["twm-suite", "report", args.grid]
    if args.baselines is not None:
        parts += ["--baselines", str(args.baselines)]
    parts += ["--tracking-uri", _tracking_uri(args), "--out", str(out), "--reps", str(args.reps),
              "--profile-reps", str(args.profile_reps), "--seed", str(args.seed)]
    return " ".join(shlex.quote(p) for p in parts)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `twm-suite report GRID`."""
    parser.add_argument("grid", help="grid name (= MLflow experiment name)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/<GRID>)")
    parser.add_argument("--profile-reps", type=int, default=stats.DEFAULT_PROFILE_REPS,
                        help="bootstrap replications for performance-profile bands (2000)")
    _add_common(parser)


def run_report(args: argparse.Namespace) -> int:
    """Write report.md / report.html with the paper's tables and figures for a grid; 0 on success, 2 on bad input."""
    from analysis.report import write_report

    try:
        uri = _tracking_uri(args)
        exp = load_experiment(args.grid, uri)
        if args.baselines is not None:
            baselines, source = load_baselines(args.baselines), f"per-run score files in `{args.baselines}`"
        else:
            baselines = paper_table1_baselines()
            source = "paper Table 1 per-game means (results/paper/table1.csv): per-game means only, no CIs"
        out = args.out or Path("results") / args.grid
        written = write_report(exp, baselines, out, _report_command(args, out), source, reps=args.reps,
                               profile_reps=args.profile_reps, seed=args.seed)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {written['report.md']} and {written['report.html']} "
          f"(tables and figures in {out / 'tables'}, {out / 'figures'})")
    return 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `twm-suite compare NAME=PATH ...`."""
    parser.add_argument("specs", nargs="*", metavar="NAME=PATH",
                        help="a per-run score JSON file, or NAME=mlflow:EXPERIMENT")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    _add_common(parser)


def _compare_inputs(args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """name -> tidy scores for every NAME=PATH spec, MLflow experiment variant and baseline file."""
    inputs: dict[str, pd.DataFrame] = {}
    for spec in args.specs:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise AnalysisError(f"'{spec}' is not NAME=PATH or NAME=mlflow:EXPERIMENT")
        if source.startswith("mlflow:"):
            exp = load_experiment(source.removeprefix("mlflow:"), _tracking_uri(args), method=name)
            if not exp.partial.empty:
                cells = ", ".join(f"{r.variant}/{r.game}/s{r.seed}" for r in exp.partial.itertuples())
                print(f"warning: {name}: {len(exp.partial)} partial run(s) not counted: {cells}", file=sys.stderr)
            if exp.tidy.empty:
                raise AnalysisError(f"experiment '{exp.name}' has no finished runs (twm.status=done)")
            variants = sorted(exp.tidy["variant"].unique())
            for v in variants:
                key = name if len(variants) == 1 else f"{name}/{v}"
                inputs[key] = exp.tidy[exp.tidy["variant"] == v]
        else:
            inputs[name] = load_score_file(source, method=name)
    if args.baselines is not None:
        base = load_baselines(args.baselines)
        for method in dict.fromkeys(base["method"]):
            inputs[method] = base[base["method"] == method]
    if not inputs:
        raise AnalysisError("nothing to compare: give NAME=PATH specs and/or --baselines DIR")
    return inputs


def compare(inputs: dict[str, pd.DataFrame], reps: int, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """{name: {median|iqm|mean|optimality_gap: {point, lo, hi}}} on the 26 games (CIs degenerate for 1 run)."""
    out = {}
    for i, (name, tidy) in enumerate(tqdm(list(inputs.items()), desc="bootstrap CIs", unit="method",
                                          file=sys.stderr)):
        hns = hns_matrix(tidy, ATARI_100K_GAMES, where=name)
        ivs = stats.aggregate_intervals(hns, reps=reps, seed=seed + i)
        out[name] = {m: ivs[m].as_dict() for m in stats.METRICS}
        out[name]["runs"] = hns.shape[0]
        out[name]["games_above_human"] = stats.games_above_human(hns)
    return out


def run_compare(args: argparse.Namespace) -> int:
    """Print aggregates with CIs for score files / MLflow experiments as a table or JSON; 0 ok, 2 bad input."""
    try:
        result = compare(_compare_inputs(args), args.reps, args.seed)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    width = max(len(n) for n in result) + 2
    print(f"{'method':<{width}}{'runs':>5}  " + "".join(f"{m:<26}" for m in stats.METRICS) + "≥human")
    for name, res in result.items():
        cells = "".join(
            f"{res[m]['point']:.3f} ({res[m]['lo']:.3f}–{res[m]['hi']:.3f})".ljust(26) for m in stats.METRICS
        )
        print(f"{name:<{width}}{res['runs']:>5}  {cells}{res['games_above_human']}")
    print(f"({args.reps} bootstrap reps, seed {args.seed}, 95% CIs; 1-run methods have no CI)")
    return 0
