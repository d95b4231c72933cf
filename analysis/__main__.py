"""`python -m analysis report GRID ...` / `python -m analysis compare NAME=PATH ...` (same as the twm-suite verbs)."""

from __future__ import annotations

import argparse
import sys

from analysis.cli import add_compare_arguments, add_report_arguments, run_compare, run_report


def main(argv: list[str] | None = None) -> int:
    """Parse the verb and run it."""
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    add_report_arguments(verbs.add_parser("report", help="tables, figures and report.md/html for a grid"))
    add_compare_arguments(verbs.add_parser("compare", help="aggregates with CIs for score files / experiments"))
    args = parser.parse_args(argv)
    return run_report(args) if args.verb == "report" else run_compare(args)


if __name__ == "__main__":
    sys.exit(main())
