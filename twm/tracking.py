"""The one place a run talks to MLflow: params, batched metrics, tags, artifacts, completion.

A run marks its own completion with the tag `twm.status` ("running", "interrupted", "done",
"failed"); MLflow's own RUNNING/FAILED status is not a completion marker (a SIGKILLed run stays
RUNNING, a requeued one may read FAILED). Metric names the analysis reads: `eval/return`
(step = env step) and `final/score`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twm.run_record import MLFLOW_DB, STATE_DONE, STATE_FAILED, TAG_STATUS


class TrackingError(RuntimeError):
    """The tracking store cannot be used (one-line message)."""


def default_tracking_uri(folder: Path) -> str:
    """A sqlite file `mlflow.db` in `folder` (a run directory, or the suite's runs folder); absolute,
    because jobs may start elsewhere."""
    return f"sqlite:///{(folder / MLFLOW_DB).resolve()}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


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


class Tracker:
    """One MLflow run, reopened by id on resume; metrics are buffered and sent in batches."""

    def __init__(self, tracking_uri: str, experiment: str = "twm", run_name: str | None = None,
                 tags: dict[str, str] | None = None, flush_every_s: float = 30.0):
        check_tracking_uri(tracking_uri)
        from mlflow.tracking import MlflowClient  # slow import, only when tracking starts

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.flush_every_s = flush_every_s
        self.run_id: str | None = None
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()

    def start(self, params: dict[str, Any], run_id: str | None = None) -> str:
        """Open a new run (logging params and tags) or reopen `run_id` after a resume."""
        from mlflow.entities import Param, RunTag

        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self._create_experiment())
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self.run_id = run.info.run_id
            items = [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v))
                     for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in self.tags.items()])
        return self.run_id

    def _create_experiment(self) -> str:
        try:
            return self.client.create_experiment(self.experiment)
        except Exception:  # created concurrently by another run of the same grid
            experiment = self.client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def log_metrics(self, metrics: dict[str, float], step: int, *, flush: bool = False) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if flush or time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)
        self._last_flush = time.monotonic()

    def set_status(self, status: str) -> None:
        """The explicit completion marker: running | interrupted | done | failed."""
        self.flush()
        self.client.set_tag(self.run_id, TAG_STATUS, status)

    def log_json(self, name: str, obj: Any) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=1), name)

    def close(self, status: str) -> None:
        """Flush, set `twm.status` and end the MLflow run with a matching MLflow status."""
        self.set_status(status)
        mlflow_status = {STATE_DONE: "FINISHED", STATE_FAILED: "FAILED"}.get(status, "KILLED")
        self.client.set_terminated(self.run_id, status=mlflow_status)
