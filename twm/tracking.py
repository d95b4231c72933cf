"""The one place a run talks to MLflow. MLflow mirrors the run directory; it is never on the training path.

- The trainer appends every metric point to `metrics.jsonl` (twm.metric_log) and writes `status.json`;
  `Tracker.start` records what else MLflow gets (store, experiment, run name, tags, params and a run uid)
  in `mlflow_run.json`, then a background `Sender` thread mirrors the run directory into MLflow every
  `runtime.tracking_interval_s`, retrying with exponential backoff. A failure is a warning line in the
  run's log and a `tracking` field in status.json, never a failed run. At the end the sender gets
  `runtime.tracking_close_s` to send the last points; whatever is left is sent by `twm-suite sync` or
  the next start.
- `Mirror.step` is the one sync pass, used by the sender and by `twm-suite sync`. It is idempotent:
  before sending it asks MLflow which (key, step) points the run already holds and sends only the others
  (MLflow's log_batch does not de-duplicate), so after any mix of kills, lost acknowledgements and
  resumes the run's history holds each (key, step) of the local log exactly once. The MLflow run is
  found again by its uid tag, so a crash between creating it and recording its id makes no second run.
  Tags follow the run: `twm.status` mirrors status.json (set after the metrics, so `done` implies
  `final/score` is there) and is the completion marker; MLflow's own status (FINISHED/FAILED/KILLED)
  follows it but is not a marker (a SIGKILLed run stays RUNNING).
- Only one process sends a run at a time: the sender (or `sync`) holds `.tracking.lock` in the run dir.

MLflow's own asynchronous logging (`synchronous=False`, 3.17) does not do this job: its queue is in
memory (lost on a kill), a failed batch is logged and dropped without retry, and its exit hook waits
without a bound for the queue to drain.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twm import run_record as rr
from twm.metric_log import read_points

BACKOFF_MIN_S = 2.0
BACKOFF_MAX_S = 300.0
WARN_EVERY_S = 300.0  # while tracking keeps failing, repeat the warning at most this often
BATCH = 1000  # MLflow's log_batch limit: 1000 metrics, 100 params, 100 tags per request
MLFLOW_STATUS = {rr.STATE_RUNNING: "RUNNING", rr.STATE_DONE: "FINISHED", rr.STATE_FAILED: "FAILED",
                 rr.STATE_INTERRUPTED: "KILLED"}


class TrackingError(RuntimeError):
    """The tracking store cannot be used (one-line message)."""


def default_tracking_uri(folder: Path) -> str:
    """A sqlite file `mlflow.db` in `folder` (a run directory, or the suite's runs folder); absolute,
    because jobs may start elsewhere."""
    return f"sqlite:///{(folder / rr.MLFLOW_DB).resolve()}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_location(uri: str, folder: Path) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite store's file, the server's own
    `--artifacts-destination` for a server (None), else `folder/mlartifacts`; never ./mlruns of the CWD."""
    if is_server(uri):
        return None
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / rr.MLFLOW_ARTIFACTS)
    return str(Path(folder).resolve() / rr.MLFLOW_ARTIFACTS)


def ui_link(uri: str, experiment_id: str) -> str:
    """The experiment's page on the runs table (MLflow 3.17 opens the GenAI overview without the parameter)."""
    base = uri.rstrip("/") if is_server(uri) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one line when an http(s) tracking server does not answer 200 on /health."""
    if not is_server(uri):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status == 200:
                return
            raise TrackingError(f"tracking server {uri} answered {response.status} on /health")
    except urllib.error.HTTPError as err:
        hint = " (start it with --allowed-hosts for this host name, see docs/suite.md)" if err.code == 403 else ""
        raise TrackingError(f"tracking server {uri} answered {err.code} {err.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"tracking server {uri} is unreachable: {reason}") from None


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


MLFLOW_ENV = {  # MLflow reads these at each call; what a user set first wins
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def set_mlflow_env() -> None:
    """Put MLFLOW_ENV's defaults into the environment. Called on the main thread before the sender starts:
    setting a new variable reallocates the C environment, which a native library's getenv on another thread
    (torch, OpenMP, the emulator while the trainer steps) may be reading at that moment."""
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)


SENDER_MODULES = ("mlflow.tracking", "mlflow.entities", "mlflow.exceptions",
                  "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.tracking.rest_store")


def preload_mlflow() -> None:
    """Import what the sender will use, on the caller's (main) thread before training starts: MLflow pulls in
    pandas, pyarrow, scipy, protobuf and cryptography, whose native initialisation should not run on a second
    thread while the trainer steps the emulator and torch (about 1.5 s, once). A broken install is not the
    run's problem here: the sender meets the same error and reports it as a tracking fault."""
    try:
        for module in SENDER_MODULES:
            importlib.import_module(module)
    except Exception:  # noqa: BLE001, S110 - reported by the sender when it tries the same
        pass


def client_for(uri: str):
    """An MlflowClient whose HTTP calls fail fast: the sender and sync retry with their own backoff, where
    MLflow's default (7 retries, 120 s timeout) stalls a call for about 4 minutes. It prints no "View run"
    line into the run's log when a run ends. The environment is set by set_mlflow_env beforehand (the
    Tracker does it on the main thread); here, in the sender's thread, that is a no-op."""
    set_mlflow_env()
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    # Opening a sqlite file creates or migrates its schema, which concurrent first users corrupt (alembic:
    # "duplicate column", "table _alembic_tmp_params already exists"): one at a time, by a flock beside the
    # file; later users find the schema current and pass at once.
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with rr.FileLock.acquire(database.with_name(database.name + ".lock"), wait_s=None):
        if not database.exists() or database.stat().st_size == 0:
            create_sqlite_store(database)
        return MlflowClient(tracking_uri=uri)


def create_sqlite_store(database: Path) -> None:
    """Make a new sqlite store whole under a temp name, then rename it into place (the caller holds the
    store's lock). MLflow creates a schema by 68 migrations that are not one transaction (sqlite
    commits each DDL statement), so a process killed midway, as a trainer may be at any moment, would leave
    a store on which every later opener fails ("duplicate column name: step")."""
    from mlflow.tracking import MlflowClient

    for stale in database.parent.glob(f".{database.name}{rr.TEMP_MARK}*"):  # of a creator killed midway
        stale.unlink(missing_ok=True)
    temp = rr.temp_path(database)
    client = MlflowClient(tracking_uri=f"sqlite:///{temp}")  # creates the whole schema
    engine = getattr(getattr(getattr(client, "_tracking_client", None), "store", None), "engine", None)
    if engine is not None:
        engine.dispose()  # no connection stays open on the temp name
    with open(temp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temp, database)
    rr.fsync_dir(database.parent)


def ensure_experiment(client, name: str, location: str | None, tags: dict[str, str] | None = None) -> str:
    """The experiment's id, created (with its artifact location and tags) if missing, restored if deleted."""
    from mlflow.exceptions import MlflowException

    tags = {rr.TAG_EXPERIMENT_KIND: rr.EXPERIMENT_KIND_TRAINING, **(tags or {})}
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=location, tags=tags)
        except MlflowException:  # created concurrently by another run of the same grid
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    for key, value in tags.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# ------------------------------------------------------------------------------------ the lock
class TrackingLock(rr.FileLock):
    """The run's `.tracking.lock`: only its holder sends the run to MLflow."""

    @classmethod
    def acquire(cls, run_dir: Path, *, wait: bool) -> TrackingLock | None:
        """The lock; None when another process holds it and `wait` is False."""
        return super().acquire(Path(run_dir) / rr.TRACKING_LOCK, None if wait else 0.0)


# ------------------------------------------------------------------------ what MLflow should get
def record_run(run_dir: Path, uri: str, experiment: str, run_name: str, tags: dict[str, str],
               params: dict[str, Any], location: str | None, offline: bool) -> dict:
    """Write mlflow_run.json for this start of the run (keeping its uid, run ids and sync marks); the
    caller holds the tracking lock."""
    path = Path(run_dir) / rr.MLFLOW_RUN
    old = rr.read_json(path) or {}
    run_ids = dict(old.get("run_ids") or {})
    if old.get("run_id") and old.get("tracking_uri"):  # also a file of the format before run ids per store
        run_ids.setdefault(old["tracking_uri"], old["run_id"])
    record = {
        "tracking_uri": uri,
        "experiment": experiment,
        "run_name": run_name,
        "artifact_location": location,
        "offline": offline,
        "uid": old.get("uid") or uuid.uuid4().hex,
        "tags": {str(k): str(v) for k, v in tags.items()},
        "params": {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in params.items()},
        "run_ids": run_ids,
        "run_id": run_ids.get(uri),  # the MLflow run in the trainer's own store
        "synced": old.get("synced") or {},
    }
    rr.write_json_atomic(path, record)
    return record


class Mirror:
    """Brings one run's MLflow run up to date with its run directory, one `step()` at a time."""

    def __init__(self, run_dir: Path, uri: str | None = None):
        self.run_dir = Path(run_dir)
        record = rr.read_json(self.run_dir / rr.MLFLOW_RUN)
        if not record or "uid" not in record:
            raise TrackingError(f"{self.run_dir} has no {rr.MLFLOW_RUN} of this version: the run was never started "
                                "by this trainer")
        self.uri = uri or record["tracking_uri"]
        self.run_id: str | None = record["run_ids"].get(self.uri)
        self.sent = 0  # points this mirror sent
        self.present = 0  # points MLflow already had
        self.skipped_lines = 0  # unreadable lines of the local log (not sent; reported)
        self.unchanged = False  # the last step found the run already in sync
        self._client = None
        self.reset()

    def reset(self) -> None:
        """Forget what MLflow holds: the next step asks it again (after any failure, since a failed call may
        still have been applied)."""
        self._run = None
        self._known: set[tuple[str, int]] | None = None
        self._offset = 0
        self._tags: dict[str, str] = {}
        self._status: str | None = None
        self._artifact = False

    def step(self) -> int:
        """One pass: create or find the MLflow run, send the missing points, tags, final scores and status.
        Returns the number of points sent; raises on any tracking failure."""
        record = rr.read_json(self.run_dir / rr.MLFLOW_RUN)
        state = (rr.read_json(self.run_dir / rr.STATUS) or {}).get("state")
        log = self.run_dir / rr.METRICS
        size, mtime = _stat(log)
        mark = {"run_id": self.run_id, "log_size": size, "log_mtime_ns": mtime, "state": state,
                "tags": record["tags"]}
        self.unchanged = self._known is None and self.run_id is not None and record["synced"].get(self.uri) == mark
        if self.unchanged:
            return 0  # nothing changed since the last complete pass: MLflow is not asked anything
        if self._client is None:
            self._client = client_for(self.uri)
        if self._run is None:
            self._open(record)
        points, self._offset, skipped = read_points(log, self._offset, end=size)
        self.skipped_lines += skipped
        new, seen = [], set()
        for point in points:
            if point.ident in self._known or point.ident in seen:
                self.present += point.ident in self._known
                continue
            seen.add(point.ident)
            new.append(point)
        self._send_metrics(new)
        self._send_tags(record, state)
        if state == rr.STATE_DONE and not self._artifact and (self.run_dir / rr.FINAL_SCORES).exists():
            self._client.log_text(self.run_id, (self.run_dir / rr.FINAL_SCORES).read_text(), rr.FINAL_SCORES)
            self._artifact = True
        self._send_status(state)
        if self._offset == size:
            mark["run_id"] = self.run_id
            self._remember(mark)
        return len(new)

    def _open(self, record: dict) -> None:
        """Find the MLflow run (by id, else by uid tag) or create it; log any params it lacks; learn which
        (key, step) points, tags and status it holds."""
        from mlflow.entities import Param, ViewType
        from mlflow.exceptions import MlflowException

        client, run = self._client, None
        if self.run_id:
            try:
                run = client.get_run(self.run_id)
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        if run is None:
            moved = self.uri != record["tracking_uri"]  # synced into another store than the trainer's
            location = artifact_location(self.uri, self.run_dir) if moved else record["artifact_location"]
            experiment_id = ensure_experiment(client, record["experiment"], location)
            found = client.search_runs([experiment_id], f"tags.`{rr.TAG_RUN_UID}` = '{record['uid']}'",
                                       run_view_type=ViewType.ALL, max_results=1)
            run = found[0] if found else client.create_run(
                experiment_id, run_name=record["run_name"], tags={rr.TAG_RUN_UID: record["uid"], **record["tags"]})
        if run.info.lifecycle_stage == "deleted":
            client.restore_run(run.info.run_id)
        if run.info.run_id != self.run_id:
            self.run_id = run.info.run_id
            self._update_record(lambda r: r["run_ids"].__setitem__(self.uri, self.run_id))
        missing = [Param(k, v) for k, v in record["params"].items() if k not in run.data.params]
        for i in range(0, len(missing), 100):
            client.log_batch(self.run_id, params=missing[i:i + 100])
        self._known = {(key, m.step) for key in run.data.metrics for m in client.get_metric_history(self.run_id, key)}
        self._tags = dict(run.data.tags)
        self._status = run.info.status
        self._run = run

    def _send_metrics(self, points: list) -> None:
        from mlflow.entities import Metric

        for i in range(0, len(points), BATCH):
            chunk = points[i:i + BATCH]
            self._client.log_batch(self.run_id, metrics=[Metric(p.key, p.value, p.ts, p.step) for p in chunk])
            self._known.update(p.ident for p in chunk)
            self.sent += len(chunk)

    def _send_tags(self, record: dict, state: str | None) -> None:
        from mlflow.entities import RunTag

        wanted = {rr.TAG_RUN_UID: record["uid"], **record["tags"]}
        if state is not None:
            wanted[rr.TAG_STATUS] = state
        changed = [RunTag(k, v) for k, v in wanted.items() if self._tags.get(k) != v]
        for i in range(0, len(changed), 100):
            self._client.log_batch(self.run_id, tags=changed[i:i + 100])
            self._tags.update({t.key: t.value for t in changed[i:i + 100]})

    def _send_status(self, state: str | None) -> None:
        wanted = MLFLOW_STATUS.get(state)
        if wanted is None or wanted == self._status:
            return
        if wanted == "RUNNING":
            self._client.update_run(self.run_id, status="RUNNING")
        else:
            self._client.set_terminated(self.run_id, status=wanted)
        self._status = wanted

    def _remember(self, mark: dict) -> None:
        """Record a complete pass, so a later sync of an unchanged run asks MLflow nothing."""
        record = rr.read_json(self.run_dir / rr.MLFLOW_RUN)
        if record["synced"].get(self.uri) != mark:
            self._update_record(lambda r: r["synced"].__setitem__(self.uri, mark))

    def _update_record(self, change: Callable[[dict], None]) -> None:
        record = rr.read_json(self.run_dir / rr.MLFLOW_RUN)
        change(record)
        record["run_id"] = record["run_ids"].get(record["tracking_uri"])
        rr.write_json_atomic(self.run_dir / rr.MLFLOW_RUN, record)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0, 0
    return st.st_size, st.st_mtime_ns


# ------------------------------------------------------------------------------ the trainer's side
class Sender(threading.Thread):
    """Mirrors the run directory into MLflow in the background: every `interval_s`, and with exponential
    backoff (BACKOFF_MIN_S .. BACKOFF_MAX_S) while it fails. It never raises into the trainer."""

    def __init__(self, mirror: Mirror, lock: TrackingLock, interval_s: float, log: Callable[[str], None],
                 on_change: Callable[[], None]):
        super().__init__(name="twm-tracking-sender", daemon=True)
        self.mirror, self.lock, self.interval_s = mirror, lock, interval_s
        self.log, self.on_change = log, on_change
        self.failures = 0  # consecutive failed passes (0 once a pass succeeds)
        self.failed_passes = 0  # all failed passes of this sender
        self.error_kinds: Counter[str] = Counter()  # what went wrong, by exception type
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self.complete = False  # the last pass sent everything there was
        self._last_warning = 0.0
        self._first = True
        self._closing = threading.Event()
        self._wake = threading.Event()

    def run(self) -> None:
        delay = 0.0
        try:
            while True:
                self._wake.wait(delay)
                self._wake.clear()
                closing = self._closing.is_set()  # set before this pass: the trainer has written everything
                if self._pass_ok() and closing:
                    return
                delay = self.interval_s if not self.failures else min(
                    BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (self.failures - 1)) * random.uniform(0.8, 1.2)
        finally:
            self.lock.release()

    def _pass_ok(self) -> bool:
        try:
            self.mirror.step()
        except Exception as err:  # any tracking fault: warn, back off, retry; never the run's problem
            self.mirror.reset()
            self.complete = False
            self.failures += 1
            self.failed_passes += 1
            self.error_kinds[type(err).__name__] += 1
            self.last_error = one_line(err)
            if self.failing_since is None:
                self.failing_since = time.time()
                self.on_change()
            if time.monotonic() - self._last_warning >= WARN_EVERY_S or self.failures == 1:
                self._last_warning = time.monotonic()
                self.log(f"warning: tracking: {self.mirror.uri}: {self.last_error}; training goes on, metrics are "
                         f"kept in {rr.METRICS} and sent when the store answers (or by `twm-suite sync`)")
            return False
        self.complete = True
        if self._first:
            self._first = False
            self.on_change()  # status.json learns the MLflow run id
        if self.failures:
            self.log(f"tracking: {self.mirror.uri} answers again after {self.failures} failed attempt(s); "
                     f"back in sync")
            self.failures, self.last_error, self.failing_since = 0, None, None
            self.on_change()
        return True

    def close(self, timeout_s: float) -> bool:
        """Send what is left, waiting at most `timeout_s`; True if everything was sent."""
        self._closing.set()
        self._wake.set()
        self.join(timeout_s)
        return not self.is_alive() and self.complete


class Tracker:
    """The trainer's handle on tracking: records the run for MLflow and runs its background Sender
    (none with `offline`: the run directory is synced later by `twm-suite sync`)."""

    def __init__(self, tracking_uri: str, experiment: str = "twm", run_name: str | None = None,
                 tags: dict[str, str] | None = None, *, interval_s: float, close_s: float, offline: bool = False,
                 location: str | None = None):
        self.uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.offline = offline
        self.location = location
        self.interval_s, self.close_s = interval_s, close_s
        self.sender: Sender | None = None
        set_mlflow_env()  # here, on the caller's thread: the sender thread must not change the environment
        if not offline:
            preload_mlflow()
        self._record: dict | None = None
        self._closed: bool | None = None  # after close: whether everything was sent

    def start(self, run_dir: Path, params: dict[str, Any], *, log: Callable[[str], None] = print,
              on_change: Callable[[], None] = lambda: None) -> None:
        """Record the run in mlflow_run.json and start sending (waits while a `twm-suite sync` of this run
        directory finishes)."""
        lock = TrackingLock.acquire(run_dir, wait=True)
        self._record = record_run(run_dir, self.uri, self.experiment, self.run_name or Path(run_dir).name,
                                  self.tags, params, self.location, self.offline)
        if self.offline:
            lock.release()
            return
        self.sender = Sender(Mirror(run_dir, self.uri), lock, self.interval_s, log, on_change)
        self.sender.start()

    @property
    def run_id(self) -> str | None:
        if self.sender is not None:
            return self.sender.mirror.run_id
        return (self._record or {}).get("run_ids", {}).get(self.uri)

    def summary(self) -> dict[str, Any]:
        """The `tracking` field of status.json."""
        out: dict[str, Any] = {"uri": self.uri, "mode": "offline" if self.offline else "live"}
        if self.sender is None:
            out["state"] = "offline: sent by `twm-suite sync`" if self.offline else "not started"
            return out
        sender = self.sender
        out["sent"] = sender.mirror.sent
        out["failed_attempts"] = sender.failed_passes
        if sender.failures:
            out["state"] = "failing"
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sender.failing_since))
            out["warning"] = (f"cannot send to {self.uri} since {since} ({sender.failures} attempts): "
                              f"{sender.last_error}; metrics are kept in {rr.METRICS} and sent later "
                              "(or by `twm-suite sync`)")
        else:
            out["state"] = "ok"
        if sender.mirror.skipped_lines:
            out["unreadable_lines"] = sender.mirror.skipped_lines
        if self._closed is not None:
            out["complete"] = self._closed
        return out

    def close(self) -> bool:
        """Give the sender `close_s` to send the last points; True if MLflow has everything."""
        if self.sender is None:
            return self.offline
        if self._closed is None:
            self._closed = self.sender.close(self.close_s)
        return self._closed
