"""The suite's side of MLflow: where a launch's runs are tracked (and how, per executor), creating the
grid's experiment before any job starts, bringing MLflow up to date from run directories (`sync`), and
which runs MLflow already knows as done. The MLflow mechanics are twm.tracking's; mlflow is imported
lazily so that planning and `--dry-run` stay fast.

Where metrics go, per executor (every trainer first appends to `metrics.jsonl` in its run directory):

- local / debug: one sqlite store for the grid (`<runs-dir>/mlflow.db`, on this machine's disk), fed live
  by each trainer's background sender;
- slurm without a server: the jobs write no MLflow store at all (`twm-train --offline`): 130 jobs on one
  sqlite file on a shared filesystem lock each other out. `twm-suite sync GRID` (also run by every
  relaunch and after `--wait`) merges the run directories into `<runs-dir>/mlflow.db`;
- an MLflow server (`--tracking-uri http://...`, any executor): fed live by each trainer's sender.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from twm.run_record import MLFLOW_RUN, STATE_DONE, TAG_GRID, TAG_RUN_KEY, TAG_STATUS
from twm.tracking import (
    Mirror,
    TrackingError,
    TrackingLock,
    artifact_location,
    client_for,
    is_server,
    one_line,
    ui_link,
)
from twm.tracking import ensure_experiment as _ensure_experiment


@dataclass(frozen=True)
class TrackingPlan:
    """How a launch's runs reach MLflow."""

    uri: str
    offline: bool  # the jobs keep their record in the run directories; `sync` merges it

    def describe(self, grid: str) -> str:
        if self.offline:
            return (f"tracking: offline in the jobs (each run directory keeps metrics.jsonl; no job writes to a "
                    f"shared sqlite file); `twm-suite sync {grid}` (also run by every relaunch) merges them into "
                    f"{self.uri}")
        kind = "MLflow server" if is_server(self.uri) else "local store"
        return (f"tracking: {kind} {self.uri}, fed by each trainer's background sender from its run directory's "
                f"metrics.jsonl (never blocks training); `twm-suite sync {grid}` fills any gap")


def tracking_plan(executor: str, uri: str) -> TrackingPlan:
    """Slurm jobs never write to a non-server store (a sqlite file on a shared filesystem): offline + sync."""
    return TrackingPlan(uri=uri, offline=executor == "slurm" and not is_server(uri))


def ensure_experiment(uri: str, name: str, runs_dir: Path) -> str:
    """Create the experiment (and a fresh sqlite DB's schema) once, before jobs start: concurrent first
    writers to a fresh sqlite DB crash in MLflow's migrations. Its artifacts go under the runs dir (or to
    the server's artifact destination). Returns the experiment id."""
    from mlflow.exceptions import MlflowException

    try:
        return _ensure_experiment(client_for(uri), name, artifact_location(uri, runs_dir), tags={TAG_GRID: name})
    except MlflowException as err:
        raise TrackingError(f"tracking store {uri}: {str(err).splitlines()[0]}") from None


@dataclass
class SyncReport:
    runs: int = 0
    sent: int = 0  # points sent now
    present: int = 0  # points MLflow already had
    unchanged: int = 0  # runs already in sync (nothing asked of MLflow)
    unreadable: int = 0  # lines of local logs that could not be read (not sent)
    live: list[Path] = field(default_factory=list)  # a trainer's own sender holds them
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def line(self, target: str) -> str:
        parts = [f"{self.sent:,} points sent", f"{self.present:,} already there",
                 f"{self.unchanged} run(s) unchanged"]
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable log line(s) skipped")
        if self.live:
            parts.append(f"{len(self.live)} live (their trainers send them)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return f"synced {self.runs} run(s) into {target}: " + ", ".join(parts)


def tracked(run_dirs: list[Path]) -> list[Path]:
    """The run directories that a trainer has started (they hold mlflow_run.json)."""
    return [d for d in run_dirs if (d / MLFLOW_RUN).exists()]


def sync_runs(run_dirs: list[Path], uri: str | None = None, *, progress: bool = True) -> SyncReport:
    """Bring MLflow up to date from each run directory (into `uri`, or each run's own store), idempotently;
    a run whose trainer is sending it right now is left to that trainer."""
    report = SyncReport()
    for run_dir in tqdm(tracked(run_dirs), desc="sync", unit="run", disable=not progress, dynamic_ncols=True):
        lock = TrackingLock.acquire(run_dir, wait=False)
        if lock is None:
            report.live.append(run_dir)
            continue
        try:
            mirror = Mirror(run_dir, uri)
            sent = mirror.step()
            report.runs += 1
            report.sent += sent
            report.present += mirror.present
            report.unchanged += mirror.unchanged
            report.unreadable += mirror.skipped_lines
        except Exception as err:  # one run's store problem must not stop the others
            report.failed.append((run_dir, one_line(err)))
        finally:
            lock.release()
    return report


def say_report(report: SyncReport, target: str, say: Callable[[str], None]) -> None:
    say(report.line(target))
    for run_dir, reason in report.failed:
        say(f"  sync failed: {run_dir}: {reason}")


def ui_hint(uri: str, name: str) -> str:
    """How to look at the grid's runs table in the MLflow UI."""
    experiment = client_for(uri).get_experiment_by_name(name)
    if experiment is None:
        return f"MLflow: no experiment {name} at {uri} yet"
    link = ui_link(uri, experiment.experiment_id)
    return f"MLflow UI: {link}" if is_server(uri) else f"MLflow UI: `mlflow ui --backend-store-uri {uri}`, then {link}"


def done_run_keys(uri: str, experiment: str) -> set[str]:
    """Run keys (tag twm.run_key) that MLflow has tagged twm.status = done in the grid's experiment."""
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    keys, token = set(), None
    while True:
        page = client.search_runs([found.experiment_id], filter_string=f"tags.`{TAG_STATUS}` = '{STATE_DONE}'",
                                  max_results=1000, page_token=token)
        keys.update(run.data.tags[TAG_RUN_KEY] for run in page if TAG_RUN_KEY in run.data.tags)
        token = page.token
        if not token:
            return keys
