"""The `report`, `compare` and `baselines` verbs: argument definitions and runners.

Registered by the suite CLI (`twm-suite report|compare|baselines`) and by `python -m analysis`. Every bad input
is one line on stderr, `twm-suite: error: <message>`, with exit code 2, before any work is done or any file is
written.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis import ATARI_100K_GAMES, AnalysisError, baselines, stats
from analysis.scores import check_game, default_tracking_uri, hns_matrix, load_experiment, load_score_file

ERROR_PREFIX = "twm-suite: error:"


def _error(message: str) -> int:
    print(f"{ERROR_PREFIX} {message}", file=sys.stderr)
    return 2


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make argparse's own errors (unknown option, missing value, bad int) one line with the common prefix."""
    def error(message: str) -> NoReturn:
        parser.exit(2, f"{ERROR_PREFIX} {parser.prog}: {message}\n")

    parser.error = error  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- arguments


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--games", default=None,
                        help="comma-separated games to aggregate over (default: compare all 26, report the grid's)")
    parser.add_argument("--runs-dir", type=Path, default=Path("twm-runs"),
                        help="suite output folder holding mlflow.db (default: twm-runs)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db)")
    parser.add_argument("--reps", type=int, default=stats.DEFAULT_REPS,
                        help=f"bootstrap replications ({stats.DEFAULT_REPS})")
    parser.add_argument("--profile-reps", type=int, default=stats.DEFAULT_PROFILE_REPS,
                        help=f"bootstrap replications of performance-profile bands ({stats.DEFAULT_PROFILE_REPS})")
    parser.add_argument("--tau-max", type=float, default=stats.DEFAULT_TAU_MAX,
                        help=f"performance profiles run over tau in [0, TAU_MAX] ({stats.DEFAULT_TAU_MAX:g})")
    parser.add_argument("--seed", type=int, default=stats.DEFAULT_SEED,
                        help="bootstrap seed (0); each method's stream depends only on its name and this seed")
    _one_line_errors(parser)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `twm-suite report GRID`."""
    parser.add_argument("grid", help="grid name (= MLflow experiment name)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <runs-dir>/<GRID>/report)")
    parser.add_argument("--baselines", default=",".join(baselines.DEFAULT_REPORT_BASELINES),
                        help="comma-separated ledger entries and/or NAME=PATH score files to compare with, or "
                             f"'none' (default: {','.join(baselines.DEFAULT_REPORT_BASELINES)})")
    _add_common(parser)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `twm-suite compare SPEC ...`."""
    parser.add_argument("specs", nargs="+", metavar="SPEC",
                        help="a ledger entry (see `twm-suite baselines`), NAME=PATH (a per-run score file) or "
                             "NAME=mlflow:EXPERIMENT")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--poi", action="append", default=[], metavar="A,B",
                        help="also the probability of improvement P(A > B) with its CI (repeatable)")
    parser.add_argument("--figures", type=Path, default=None, metavar="DIR",
                        help="also draw the aggregate, profile and probability-of-improvement figures into DIR")
    _add_common(parser)


def add_baselines_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `twm-suite baselines`."""
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("-v", "--verbose", action="store_true", help="also the provenance of each entry")
    _one_line_errors(parser)


def _check_numbers(args: argparse.Namespace) -> None:
    """The numeric options, checked before anything is read."""
    for option in ("reps", "profile_reps"):
        if getattr(args, option) < 1:
            raise AnalysisError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if args.seed < 0:
        raise AnalysisError(f"--seed must be a non-negative integer, got {args.seed}")
    if not args.tau_max > 0 or not np.isfinite(args.tau_max):
        raise AnalysisError(f"--tau-max must be a positive number, got {args.tau_max}")


def parse_games(text: str | None) -> tuple[str, ...] | None:
    """`--games Pong,Breakout` -> the games in the paper's order (None: not given)."""
    if text is None:
        return None
    names = [g.strip() for g in text.split(",") if g.strip()]
    if not names:
        raise AnalysisError(f"--games '{text}' names no game")
    for name in names:
        check_game(name, "--games")
    if len(set(names)) != len(names):
        raise AnalysisError(f"--games '{text}' names a game twice")
    return tuple(g for g in ATARI_100K_GAMES if g in names)


def _tracking_uri(args: argparse.Namespace) -> str:
    return args.tracking_uri or default_tracking_uri(args.runs_dir)


# ----------------------------------------------------------------------------- methods from specs


def _spec_names(specs: Sequence[str]) -> list[tuple[str, str | None]]:
    """(name, source) of every spec, checked without reading anything: syntax, duplicates, ledger collisions."""
    parsed, seen = [], set()
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep:
            baselines.get(spec)
            parsed.append((spec, None))
        elif not name or not source:
            raise AnalysisError(f"'{spec}' is not NAME, NAME=PATH or NAME=mlflow:EXPERIMENT")
        elif name in baselines.entries():
            raise AnalysisError(f"'{spec}': the name '{name}' is the score-ledger entry {name}; give {source} "
                                "another name")
        else:
            parsed.append((name, source))
        if name in seen:
            raise AnalysisError(f"the method name '{name}' is given twice")
        seen.add(name)
    return parsed


def resolve_methods(specs: Sequence[str], tracking_uri: str) -> dict[str, pd.DataFrame]:
    """name -> tidy scores for ledger names, NAME=PATH files and NAME=mlflow:EXPERIMENT (one per variant)."""
    methods: dict[str, pd.DataFrame] = {}
    for name, source in _spec_names(specs):
        if source is None:
            methods[name] = baselines.load(name)
        elif source.startswith("mlflow:"):
            exp = load_experiment(source.removeprefix("mlflow:"), tracking_uri, method=name)
            if not exp.partial.empty:
                cells = ", ".join(f"{r.variant}/{r.game}/s{r.seed}" for r in exp.partial.itertuples())
                print(f"warning: {name}: {len(exp.partial)} partial run(s) not counted: {cells}", file=sys.stderr)
            if exp.tidy.empty:
                raise AnalysisError(f"experiment '{exp.name}' has no finished runs (twm.status=done)")
            variants = sorted(exp.tidy["variant"].unique())
            for v in variants:
                key = name if len(variants) == 1 else f"{name}/{v}"
                if key in methods:
                    raise AnalysisError(f"the method name '{key}' is given twice")
                methods[key] = exp.tidy[exp.tidy["variant"] == v]
        else:
            methods[name] = load_score_file(source, method=name)
    return methods


def parse_pairs(pairs: Sequence[str], names: Sequence[str]) -> list[tuple[str, str]]:
    """`--poi A,B` options -> (A, B) pairs of compared methods."""
    out = []
    for text in pairs:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise AnalysisError(f"--poi '{text}' is not A,B (two method names)")
        for part in parts:
            if part not in names:
                raise AnalysisError(f"--poi '{text}': '{part}' is not one of the compared methods ({', '.join(names)})")
        if parts[0] == parts[1]:
            raise AnalysisError(f"--poi '{text}' compares a method with itself")
        out.append((parts[0], parts[1]))
    return out


def matrices(methods: dict[str, pd.DataFrame], games: Sequence[str], hint: str = "") -> dict[str, np.ndarray]:
    """name -> (runs x games) HNS matrix; every method needs the same runs on every game."""
    out = {}
    for name, tidy in methods.items():
        try:
            out[name] = hns_matrix(tidy, games, where=name)
        except AnalysisError as err:
            raise AnalysisError(f"{err}{hint}") from None
    return out


# ----------------------------------------------------------------------------- compare


def method_result(name: str, hns: np.ndarray, reps: int, seed: int) -> dict:
    """One method's aggregates with CIs; a 1-run method is marked as per-game means (no CIs, no IQM/OG)."""
    ivs = stats.aggregate_intervals(hns, reps=reps, seed=stats.stream_seed(name, seed))
    per_game_means = hns.shape[0] < 2
    out: dict = {"runs": int(hns.shape[0]), "per_game_means": per_game_means,
                 "games_above_human": stats.games_above_human(hns), "stream_seed": stats.stream_seed(name, seed)}
    for metric in stats.METRICS:
        out[metric] = ivs[metric].as_dict() if metric in ivs else None
    if per_game_means:
        out["note"] = ("per-game means only: median and mean without intervals; IQM and optimality gap are "
                       "run-level statistics and are not comparable")
    return out


def check_pairs(pairs: Sequence[tuple[str, str]], hns: dict[str, np.ndarray]) -> None:
    """Both methods of a probability of improvement need run-level scores."""
    for x, y in pairs:
        for name in (x, y):
            if hns[name].shape[0] < 2:
                raise AnalysisError(f"--poi {x},{y}: {name} has per-game means only (1 run per game); the "
                                    "probability of improvement needs runs")


def poi_result(x: str, y: str, hns: dict[str, np.ndarray], reps: int, seed: int) -> dict:
    """P(x > y) with its CI, from the pair's own stream."""
    stream = stats.stream_seed(f"P({x} > {y})", seed)
    iv = stats.probability_of_improvement(hns[x], hns[y], reps=reps, seed=stream)
    return {"x": x, "y": y, **iv.as_dict(), "stream_seed": stream}


def compare(hns: dict[str, np.ndarray], pairs: Sequence[tuple[str, str]], reps: int, seed: int,
            games: Sequence[str]) -> dict:
    """Aggregates with CIs of every method, and P(A > B) of every pair (strict-JSON-ready)."""
    methods = {name: method_result(name, m, reps, seed)
               for name, m in tqdm(hns.items(), desc="bootstrap CIs", unit="method", file=sys.stderr)}
    poi = [poi_result(x, y, hns, reps, seed) for x, y in pairs]
    return {"reps": reps, "seed": seed, "confidence": stats.CONFIDENCE, "games": list(games), "methods": methods,
            "probability_of_improvement": poi}


def _cell(value: dict | None) -> str:
    if value is None:
        return "n/a"
    if value["lo"] is None:
        return f"{value['point']:.3f}"
    return f"{value['point']:.3f} ({value['lo']:.3f}–{value['hi']:.3f})"


def format_table(result: dict) -> str:
    """The compare result as a fixed-width text table."""
    methods = result["methods"]
    width = max(len(n) for n in methods) + 2
    lines = [f"{'method':<{width}}{'runs':>5}  " + "".join(f"{m:<26}" for m in stats.METRICS) + "≥human"]
    for name, res in methods.items():
        cells = "".join(_cell(res[m]).ljust(26) for m in stats.METRICS)
        lines.append(f"{name:<{width}}{res['runs']:>5}  {cells}{res['games_above_human']}")
    per_game = [n for n, r in methods.items() if r["per_game_means"]]
    games = len(result["games"])
    note = f"({result['reps']} bootstrap reps, seed {result['seed']}, 95% CIs, {games} games"
    if per_game:
        note += f"; {', '.join(per_game)}: per-game means (1 run per game), no CIs, IQM and optimality gap n/a"
    lines.append(note + ")")
    if result["probability_of_improvement"]:
        lines.append("")
        for p in result["probability_of_improvement"]:
            lines.append(f"P({p['x']} > {p['y']}) = {p['point']:.3f} ({p['lo']:.3f}–{p['hi']:.3f})")
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> int:
    """Print aggregates with CIs for ledger entries / score files / MLflow experiments; 0 ok, 2 bad input."""
    try:
        _check_numbers(args)
        games = parse_games(args.games) or ATARI_100K_GAMES
        methods = resolve_methods(args.specs, _tracking_uri(args))
        pairs = parse_pairs(args.poi, list(methods))
        hint = "" if args.games else " (compare a subset with --games)"
        hns = matrices(methods, games, hint)
        check_pairs(pairs, hns)
        result = compare(hns, pairs, args.reps, args.seed, games)
        if args.figures is not None:
            written = _compare_figures(hns, result, args)
    except AnalysisError as err:
        return _error(str(err))
    print(json.dumps(result, indent=2, allow_nan=False) if args.format == "json" else format_table(result))
    if args.figures is not None:
        print(f"figures written to {args.figures}: {', '.join(p.name for p in written)}", file=sys.stderr)
    return 0


def _compare_figures(hns: dict[str, np.ndarray], result: dict, args: argparse.Namespace) -> list[Path]:
    from analysis import figures

    names = list(hns)
    styles = figures.method_styles(names)
    intervals = {n: {m: stats.Interval(**result["methods"][n][m]) for m in stats.METRICS if result["methods"][n][m]}
                 for n in names}
    written = figures.save(figures.aggregate_metrics(intervals, styles), args.figures, "aggregates")
    taus = stats.profile_taus(args.tau_max)
    profiles = {n: (taus, *stats.performance_profile(m, taus, args.profile_reps, stats.stream_seed(n, args.seed)))
                for n, m in hns.items() if m.shape[0] > 1}
    if profiles:
        written += figures.save(figures.performance_profiles(profiles, styles), args.figures, "profiles")
    pois = [(p["x"], p["y"], stats.Interval(p["point"], p["lo"], p["hi"]))
            for p in result["probability_of_improvement"]]
    if pois:
        written += figures.save(figures.probability_of_improvement(pois, styles), args.figures,
                                "probability_of_improvement")
    return written


# ----------------------------------------------------------------------------- report


def _report_command(args: argparse.Namespace, out: Path) -> str:
    """The full command line that reproduces this report (every option spelled out)."""
    parts = ["twm-suite", "report", args.grid, "--baselines", args.baselines]
    if args.games:
        parts += ["--games", args.games]
    parts += ["--tracking-uri", _tracking_uri(args), "--out", str(out), "--reps", str(args.reps),
              "--profile-reps", str(args.profile_reps), "--tau-max", f"{args.tau_max:g}", "--seed", str(args.seed)]
    return " ".join(shlex.quote(p) for p in parts)


def report_baselines(text: str) -> list[str]:
    """`--baselines` -> specs (ledger names or NAME=PATH); 'none' -> no baselines."""
    if text.strip().lower() == "none":
        return []
    specs = [s.strip() for s in text.split(",") if s.strip()]
    for spec in specs:
        if spec.partition("=")[2].startswith("mlflow:"):
            raise AnalysisError(f"--baselines '{spec}': baselines are ledger entries or score files; "
                                "compare experiments with `twm-suite compare`")
    return specs


def run_report(args: argparse.Namespace) -> int:
    """Write report.md / report.html with the paper's tables and figures for a grid; 0 on success, 2 on bad input."""
    from analysis.report import write_report

    try:
        _check_numbers(args)
        games = parse_games(args.games)
        specs = report_baselines(args.baselines)
        base = resolve_methods(specs, _tracking_uri(args))
        exp = load_experiment(args.grid, _tracking_uri(args))
        out = args.out or args.runs_dir / args.grid / "report"
        source = (f"score ledger entries {', '.join(base)} (analysis/ledger, provenance in its PROVENANCE.md)"
                  if base else "none")
        written = write_report(exp, base, out, _report_command(args, out), source, reps=args.reps,
                               profile_reps=args.profile_reps, seed=args.seed, games=games, tau_max=args.tau_max)
    except AnalysisError as err:
        return _error(str(err))
    print(f"report written to {written['report.md']} and {written['report.html']} "
          f"(tables and figures in {out / 'tables'}, {out / 'figures'})")
    return 0


# ----------------------------------------------------------------------------- baselines


def ledger_rows() -> list[dict]:
    """Every ledger entry with its runs, its recomputed mean and median, and its provenance."""
    rows = []
    for name, entry in baselines.entries().items():
        hns = hns_matrix(baselines.load(name), where=name)
        points = stats.point_estimates(hns)
        fewest, most = entry.run_counts
        rows.append({"name": name, "runs_used": int(hns.shape[0]), "runs_in_file": f"{fewest}–{most}" if most > fewest
                     else str(most), "runs": entry.runs,
                     "per_game_means": hns.shape[0] < 2, "mean": points["mean"], "median": points["median"],
                     "method": entry.method, "source": entry.source, "score": entry.score,
                     "headline": entry.headline, "verdict": entry.verdict})
    return rows


def run_baselines(args: argparse.Namespace) -> int:
    """List the score ledger: name, runs, mean and median (recomputed here), and where each file comes from."""
    try:
        rows = ledger_rows()
    except AnalysisError as err:
        return _error(str(err))
    if args.format == "json":
        print(json.dumps(rows, indent=2, allow_nan=False))
        return 0
    width = max(len(r["name"]) for r in rows) + 2
    print(f"{'name':<{width}}{'runs':>5}  {'mean':>6}  {'median':>6}  kind")
    for r in rows:
        kind = "per-game means" if r["per_game_means"] else "runs"
        if r["runs_in_file"] != str(r["runs_used"]):
            kind += f" (the first {r['runs_used']} of {r['runs_in_file']} runs of each game)"
        print(f"{r['name']:<{width}}{r['runs_used']:>5}  {r['mean']:>6.3f}  {r['median']:>6.3f}  {kind}")
        if args.verbose:
            for key in ("method", "source", "score", "headline", "verdict"):
                print(f"{'':<{width}}  {key}: {r[key]}")
    print(f"({len(rows)} entries in {baselines.LEDGER_DIR}; provenance: {baselines.PROVENANCE}; use a name in "
          "`twm-suite compare` or `twm-suite report --baselines`)")
    return 0
