"""The suite's side of MLflow: where runs go, checking a server answers, creating the grid's experiment
before any job starts, and which runs MLflow already knows as done. mlflow is imported lazily so that
planning and `--dry-run` stay fast.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path


class TrackingError(RuntimeError):
    """An unreachable server or an unusable store (one-line message)."""


def default_tracking_uri(runs_dir: Path) -> str:
    """One sqlite file for all grids, under the suite's output folder (absolute: jobs run elsewhere)."""
    return f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingError unless `<uri>/health` answers 200 (what `mlflow server` serves)."""
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
        raise TrackingError(f"tracking server {uri} is not reachable: {reason}") from None


def ensure_experiment(uri: str, name: str) -> str:
    """Create the experiment (and a fresh sqlite DB's schema) once, before jobs start: concurrent first
    writers to a fresh sqlite DB crash in MLflow's migrations. Returns the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        return client.create_experiment(name, tags={"twm.grid": name})
    except MlflowException as err:
        raise TrackingError(f"tracking store {uri}: {str(err).splitlines()[0]}") from None


def done_run_keys(uri: str, experiment: str) -> set[str]:
    """Run keys (tag twm.run_key) that MLflow has tagged twm.status = done in the grid's experiment."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    keys, token = set(), None
    while True:
        page = client.search_runs([found.experiment_id], filter_string="tags.`twm.status` = 'done'",
                                  max_results=1000, page_token=token)
        keys.update(run.data.tags["twm.run_key"] for run in page if "twm.run_key" in run.data.tags)
        token = page.token
        if not token:
            return keys
