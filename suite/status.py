"""`twm-suite status GRID`: one row per variant x game with how many runs are not started / pending /
running / requeued / interrupted / failed / done, the env steps reached, the last evaluation return and an
ETA. Built from run directories, run locks and `squeue --me` only (never sacct, never the tracking server),
so it answers at once; when squeue fails, the Slurm runs it would decide are shown as `unknown`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

from suite.cluster import QueueUnreadableError, squeue_states
from suite.grids import RunSpec
from suite.rundir import STATES, UNKNOWN, RunState, run_state
from twm.config import preset
from twm.run_record import DONE, STATUS, SUBMITTED, read_json

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


def read_queue(specs: list[RunSpec], runs_dir: Path, *, always: bool = False) -> dict[str, tuple[str, str]]:
    """This user's Slurm queue when it matters: `always`, or when some run was submitted to Slurm ({} else).
    Raises QueueUnreadableError (fail closed) when squeue fails or times out."""
    if always or any((read_json(s.run_dir(runs_dir) / SUBMITTED) or {}).get("executor") == "slurm" for s in specs):
        return squeue_states()
    return {}


def collect(specs: list[RunSpec], runs_dir: Path, warn: Callable[[str], None] | None = None) -> list[RunState]:
    """The state of every run; at most one squeue call for all of them. An unreadable queue is reported
    through `warn` and leaves the Slurm runs it would decide `unknown`."""
    try:
        queue: dict[str, tuple[str, str]] | None = read_queue(specs, runs_dir)
    except QueueUnreadableError as err:
        if warn is not None:
            warn(f"warning: {err}; Slurm runs not otherwise known are shown as {UNKNOWN}")
        queue = None
    return [run_state(spec, runs_dir, queue) for spec in specs]


@cache
def _capacity(preset_name: str, overrides: tuple[tuple[str, str], ...]) -> int:
    return preset(preset_name).with_overrides(dict(overrides)).buffer.capacity


def total_env_steps(spec: RunSpec) -> int:
    """The env steps of a whole run (buffer.capacity: 100K in the paper)."""
    return _capacity(spec.preset, spec.overrides)


def env_steps_done(specs: list[RunSpec], runs_dir: Path) -> int:
    """The grid's env steps so far, from the runs' status.json (a done run counts in full)."""
    total = 0
    for spec in specs:
        run_dir = spec.run_dir(runs_dir)
        if (run_dir / DONE).exists():
            total += total_env_steps(spec)
        else:
            total += int((read_json(run_dir / STATUS) or {}).get("env_step") or 0)
    return total


def format_table(states: list[RunState]) -> str:
    """The status table, one row per (variant, game), plus a total row."""
    rows: dict[tuple[str, str], list[RunState]] = {}
    for state in states:
        rows.setdefault((state.spec.variant, state.spec.game), []).append(state)
    names = [*STATES, UNKNOWN] if any(s.state == UNKNOWN for s in states) else list(STATES)
    header = ["variant", "game", *names, "env steps", "last eval", "ETA"]
    lines = [header]
    for (variant, game), group in rows.items():
        lines.append([variant, game, *_counts(group, names), _steps(group), _eval(group), _eta(group)])
    lines.append(["total", f"{len(states)} runs", *_counts(states, names), _steps(states), "", _eta(states)])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = ["  ".join(str(cell).ljust(w) if i < 2 else str(cell).rjust(w) for i, (cell, w) in
                     enumerate(zip(row, widths, strict=True))) for row in lines]
    out.insert(1, "-" * len(out[0]))
    out.insert(len(out) - 1, "-" * len(out[0]))
    for state in states:
        if state.state in ("failed", "interrupted", UNKNOWN) or (state.state == "not-started" and state.reason):
            out.append(f"{state.state}: {state.spec.key}: {state.reason or 'see train.log'}")
        if state.tracking_warning:
            out.append(f"tracking: {state.spec.key}: {state.tracking_warning}")
    return "\n".join(out)


def _counts(group: list[RunState], names: list[str]) -> list[str]:
    return [str(sum(s.state == name for s in group) or ".") for name in names]


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
    states = collect(specs, runs_dir, warn=say)
    say(format_table(states))
    return 1 if any(s.state == "failed" for s in states) else 0
