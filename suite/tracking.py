"""The suite's side of MLflow: creating the grid's experiment before any job starts, and which runs
MLflow already knows as done. The default store and the server check are twm.tracking's. mlflow is
imported lazily so that planning and `--dry-run` stay fast.
"""

from __future__ import annotations

from twm.run_record import STATE_DONE, TAG_GRID, TAG_RUN_KEY, TAG_STATUS
from twm.tracking import TrackingError


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
        return client.create_experiment(name, tags={TAG_GRID: name})
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
        page = client.search_runs([found.experiment_id], filter_string=f"tags.`{TAG_STATUS}` = '{STATE_DONE}'",
                                  max_results=1000, page_token=token)
        keys.update(run.data.tags[TAG_RUN_KEY] for run in page if TAG_RUN_KEY in run.data.tags)
        token = page.token
        if not token:
            return keys
