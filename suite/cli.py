"""`twm-suite`: grids -> runs on this machine or on Slurm, every run in MLflow.

  twm-suite grids                       list the grids and their run counts
  twm-suite launch GRID [...]           run a grid (local pool by default; --executor slurm|debug)
  twm-suite status GRID                 not started/pending/running/requeued/interrupted/failed/done per variant x game
  twm-suite sync GRID                   bring MLflow up to date from the run directories' metric logs
  twm-suite report GRID / compare ...   the paper's tables and figures from MLflow (analysis package)
  twm-suite figures CHECKPOINT_OR_RUN   world-model figures (imagination, attention, sampling) from a checkpoint

Errors: one line `twm-suite: error: ...` on stderr, exit 2, before anything is started. `launch` exits 0 when
every run is done, 1 when one failed, 3 when the grid did not finish (stopped by a signal: relaunch to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from suite.cluster import ClusterError
from suite.grids import GridError, get_grid, grid_names, parse_games, parse_seeds, plan
from suite.launch import EXECUTORS, EXIT_INTERRUPTED, LaunchError, LaunchOptions, launch
from twm.config import ConfigError, parse_overrides
from twm.tracking import TrackingError

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away (`... | head`)


class UsageError(Exception):
    """A command line that cannot be right (one-line message)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the suite's one error format for every verb: `twm-suite: error: <message>`, exit 2."""

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# Verbs whose modules are heavy (pandas/rliable, torch): imported only when asked for.
# verb -> (module with add_<verb>_arguments and run_<verb>, help)
DELEGATED_VERBS = {
    "report": ("analysis.cli", "the paper's tables and figures for a grid (analysis.cli)"),
    "compare": ("analysis.cli", "compare grids/variants with baselines (analysis.cli)"),
    "baselines": ("analysis.cli", "the published per-run scores shipped in the package (analysis.cli)"),
    "figures": ("suite.figures", "world-model figures from a checkpoint or run directory (suite.figures)"),
    "sync": ("suite.sync", "bring MLflow up to date from the grid's run directories (suite.sync)"),
}


def cmd_grids(args: argparse.Namespace) -> int:
    rows = [(name, get_grid(name)) for name in grid_names()]
    width = max(len(name) for name, _ in rows)
    for name, grid in rows:
        shape = f"{len(grid.variants)} variant(s) x {len(grid.games)} games x {len(grid.seeds)} seeds"
        print(f"{name.ljust(width)}  {grid.num_runs:4d} runs  {grid.preset:6s} {shape}")
        if args.verbose:
            print(f"{'':{width}}  {grid.description}\n{'':{width}}  source: {grid.source}")
            print(f"{'':{width}}  games: {', '.join(grid.games)}")
            for variant, overrides in grid.variants.items():
                sets = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(preset)"
                print(f"{'':{width}}  variant {variant}: {sets}")
    return 0


def _selection(args: argparse.Namespace) -> dict:
    """--games/--seeds/--variants (None: the grid's; an empty list is an error, never 'everything')."""
    variants = None
    if args.variants is not None:
        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        if not variants:
            raise UsageError(f"bad --variants {args.variants!r}: expected a comma-separated list of variants")
    return dict(games=parse_games(args.games) if args.games is not None else None,
                seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
                variants=variants, overrides=parse_overrides(args.set))


def cmd_launch(args: argparse.Namespace) -> int:
    from suite.local import QuietStream

    opts = LaunchOptions(grid=args.grid, executor=args.executor, cluster=args.cluster, dry_run=args.dry_run,
                         force=args.force, retry_failed=args.retry_failed, parallel=args.parallel,
                         runs_per_gpu=args.runs_per_gpu, runs_dir=args.runs_dir, tracking_uri=args.tracking_uri,
                         device=args.device, wait=args.wait, **_selection(args))
    out = QuietStream(sys.stdout)  # a launch with trainers running outlives its terminal or pipe
    if opts.dry_run:
        return launch(opts)  # a reader that goes away (`| head`) ends a dry run quietly, in main()
    return launch(opts, say=out.say)


def cmd_status(args: argparse.Namespace) -> int:
    from suite.status import discover, show

    grid = get_grid(args.grid)
    planned = plan(grid, **_selection(args))
    runs_dir = args.runs_dir.resolve()
    known = {spec.key for spec in planned}
    found = [] if args.planned_only else [s for s in discover(runs_dir, grid.name, grid.preset) if s.key not in known]
    return show(planned + found, runs_dir)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="grid name (see `twm-suite grids`)")
    parser.add_argument("--games", help="comma-separated games, or 'all' (default: the grid's)")
    parser.add_argument("--seeds", help="e.g. 0,1,2 or 0-4 (default: the grid's)")
    parser.add_argument("--variants", help="comma-separated variants (default: all of the grid's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. runtime.threads=4 (repeatable; "
                             "settings that change results, e.g. runtime.precision, change the config hash, hence the "
                             "run directories; execution settings such as threads do not)")
    parser.add_argument("--runs-dir", type=Path, default=Path("twm-runs"),
                        help="output folder: run directories and the default mlflow.db (default: ./twm-runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="twm-suite", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="command", required=True)

    grids = sub.add_parser("grids", help="list the grids with their run counts")
    grids.add_argument("-v", "--verbose", action="store_true", help="also games, variants and paper source")
    grids.set_defaults(func=cmd_grids)

    la = sub.add_parser("launch", help="run a grid: skip finished runs, resume unfinished ones")
    _add_selection(la)
    la.add_argument("--executor", choices=EXECUTORS, default="local",
                    help="local: bounded pool on this machine (default); slurm: job arrays via submitit; "
                         "debug: in-process, one after the other")
    la.add_argument("--cluster", default=None, metavar="PROFILE",
                    help="slurm: slurm/profiles/PROFILE.toml or a path to a .toml (default: default)")
    la.add_argument("--dry-run", action="store_true",
                    help="print every run, the first trainer command, the cost and (slurm) the sbatch script "
                         "submitit submits; submit nothing")
    mode = la.add_mutually_exclusive_group()
    mode.add_argument("--only-missing", dest="force", action="store_false",
                      help="skip done runs, resume unfinished ones (default)")
    mode.add_argument("--force", dest="force", action="store_true",
                      help="rerun done/failed runs from scratch (old run directories are kept as *.old-<time>)")
    la.add_argument("--retry-failed", action="store_true", help="resume failed runs from their last checkpoint")
    la.add_argument("--parallel", type=int, default=0,
                    help="local only: runs at a time (default: GPUs x runs-per-gpu; on CPU "
                         "min(cores, max(2, cores/2), 8))")
    la.add_argument("--runs-per-gpu", type=int, default=1, help="K runs share one GPU in one job (default 1)")
    la.add_argument("--tracking-uri", default="",
                    help="MLflow URI, e.g. http://host:5000 (checked before submitting); "
                         "default: the profile's, else sqlite:///<runs-dir>/mlflow.db")
    la.add_argument("--device", default="", help="trainer device: auto|cpu|cuda (default: the profile's, or auto)")
    la.add_argument("--wait", action="store_true",
                    help="slurm only: wait until every submitted job has ended, with the grid's progress")
    la.set_defaults(func=cmd_launch, force=False)

    st = sub.add_parser("status", help="table of run states per variant x game (exit 1 if any run failed); "
                                       "from run directories and squeue only, never the tracking server")
    _add_selection(st)
    st.add_argument("--planned-only", action="store_true",
                    help="only the runs of this selection, not every run directory found for the grid")
    st.set_defaults(func=cmd_status)

    for verb, (_, text) in DELEGATED_VERBS.items():
        sub.add_parser(verb, help=text, add_help=False)
    return parser


def _delegated_main(verb: str, argv: list[str]) -> int:
    """Run a verb of DELEGATED_VERBS, importing its module only now."""
    import importlib

    module_name, text = DELEGATED_VERBS[verb]
    module = importlib.import_module(module_name)
    parser = ArgumentParser(prog=f"twm-suite {verb}", description=text)
    getattr(module, f"add_{verb}_arguments")(parser)
    args = parser.parse_args(argv)
    return getattr(module, f"run_{verb}")(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in DELEGATED_VERBS:
            code = _delegated_main(argv[0], argv[1:])
        else:
            args = build_parser().parse_args(argv)
            code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return code
    except (UsageError, GridError, ConfigError, ClusterError, LaunchError, TrackingError) as err:
        print(f"twm-suite: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # the reader went away: no traceback, no flush error at exit
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("twm-suite: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
