"""`python -m analysis report|compare|baselines ...`: the same verbs as `twm-suite report|compare|baselines`."""

from __future__ import annotations

import argparse
import sys

from analysis import cli

VERBS = {
    "report": "tables, figures and report.md/html for a grid",
    "compare": "aggregates with CIs for ledger entries, score files and experiments",
    "baselines": "the published per-run scores shipped in the package",
}


def main(argv: list[str] | None = None) -> int:
    """Parse the verb and run it."""
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb, text in VERBS.items():
        getattr(cli, f"add_{verb}_arguments")(verbs.add_parser(verb, help=text))
    args = parser.parse_args(argv)
    return getattr(cli, f"run_{args.verb}")(args)


if __name__ == "__main__":
    sys.exit(main())
