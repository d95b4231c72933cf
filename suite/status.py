"""`twm-suite status GRID`: one row per variant x game with how many runs are pending / running /
requeued / done / failed / missing, the env steps reached, the last evaluation return and an ETA.
Built from run directories and `squeue` only (never sacct), so it answers at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from suite.cluster import squeue_states
from suite.grids import RunSpec
from suite.rundir import STATES, RunState, run_state
from twm.run_record import SUBMITTED, read_json

_RUN_DIR = re.compile(r"s(?P<seed>\d+)-(?P<hash>[0-9a-f]{10})")


def discover(runs_dir: Path, grid: str, preset: str) -> list[RunSpec]:
    """Run directories found on disk for a grid (also those launched with other --games/--seeds/--set)."""
    specs = []
    for run_dir in sorted((runs_dir / grid).glob("*/*/s*-*")):
        match = _RUN_DIR.fullmatch(run_dir.name)
        if match and run_dir.is_dir():
            specs.append(RunSpec(grid=grid, variant=run_dir.parent.parent.name, game=run_dir.parent.name,
                                 seed=int(match["seed"]), preset=preset, overrides=(),
                                 config_hash=match["hash"]))
    return specs


def collect(specs: list[RunSpec], runs_dir: Path) -> list[RunState]:
    """The state of every run; one squeue call for all of them."""
    job_ids = {str((read_json(s.run_dir(runs_dir) / SUBMITTED) or {}).get("job_id")) for s in specs}
    queue = squeue_states(job_ids)
    return [run_state(spec, runs_dir, queue) for spec in specs]


def format_table(states: list[RunState]) -> str:
    """The status table, one row per (variant, game), plus a total row."""
    rows: dict[tuple[str, str], list[RunState]] = {}
    for state in states:
        rows.setdefault((state.spec.variant, state.spec.game), []).append(state)
    header = ["variant", "game", *STATES, "env steps", "last eval", "ETA"]
    lines = [header]
    for (variant, game), group in rows.items():
        lines.append([variant, game, *_counts(group), _steps(group), _eval(group), _eta(group)])
    lines.append(["total", f"{len(states)} runs", *_counts(states), _steps(states), "", _eta(states)])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = ["  ".join(str(cell).ljust(w) if i < 2 else str(cell).rjust(w) for i, (cell, w) in
                     enumerate(zip(row, widths, strict=True))) for row in lines]
    out.insert(1, "-" * len(out[0]))
    out.insert(len(out) - 1, "-" * len(out[0]))
    failed = [s for s in states if s.state == "failed"]
    for state in failed:
        out.append(f"failed: {state.spec.key}: {state.reason or 'see train.log'}")
    return "\n".join(out)


def _counts(group: list[RunState]) -> list[str]:
    return [str(sum(s.state == name for s in group) or ".") for name in STATES]


def _steps(group: list[RunState]) -> str:
    steps = [s.env_step for s in group]
    totals = [s.total_env_steps for s in group if s.total_env_steps]
    reached = f"{min(steps):,}" if min(steps) == max(steps) else f"{min(steps):,}-{max(steps):,}"
    return f"{reached}/{max(totals):,}" if totals else reached


def _eval(group: list[RunState]) -> str:
    returns = [s.last_eval_return for s in group if s.last_eval_return is not None]
    return f"{sum(returns) / len(returns):.1f}" if returns else "-"


def _eta(group: list[RunState]) -> str:
    etas = [s.eta_s for s in group if s.eta_s is not None]
    if not etas:
        return "-"
    seconds = int(max(etas))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def show(specs: list[RunSpec], runs_dir: Path, say: Callable[[str], None] = print) -> int:
    """Print the table; exit code 1 when any run failed, else 0."""
    states = collect(specs, runs_dir)
    say(format_table(states))
    return 1 if any(s.state == "failed" for s in states) else 0
