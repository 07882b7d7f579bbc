"""The offline journal: what a failing store could not take waits in a JSON file for `codebrain sync-tracking`.

A pending run is {uri, experiment, run_name, run_id, tags, params, calls, status}; each call is
[method, args, kwargs], an MLflow function by name or one of OUR_LOGGERS, so that the replay can log it later.
"""

from __future__ import annotations

import json
from pathlib import Path

from codebrain.registry import log_imputer
from codebrain.tracking.lineage import log_store_input
from codebrain.tracking.lock import store_lock
from codebrain.tracking.runs import experiment_id

OUR_LOGGERS = {"log_imputer": log_imputer, "log_store_input": log_store_input}  # they log into the active run


def logging_function(mlflow, method: str):
    """One of OUR_LOGGERS, else the MLflow function of that name."""
    return OUR_LOGGERS.get(method) or getattr(mlflow, method)


def error_line(err: Exception) -> str:
    """"Type: first line of the message": what a store's failure is called in one line (MLflow and SQLAlchemy
    messages run to many)."""
    message = str(err).strip()
    return f"{type(err).__name__}: {message.splitlines()[0] if message else ''}"


def pending_dir(uri: str) -> Path:
    """Where runs a failing store could not take wait: beside a SQLite store, else results/mlflow-pending/ under
    the working directory (the project folder, for Snakemake's jobs)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlflow-pending"
    return Path("results") / "mlflow-pending"


def run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


def replay(client, run_id: str, target: str, calls: list) -> None:
    """A pending run's calls through the client API (an active run of this process is left alone); ours log into
    the run made active for them."""
    for method, args, kwargs in calls:
        method = method.rpartition(":")[2]  # journals written before 0.1.0's split named ours "module:function"
        if method == "log_metrics":
            for key, value in args[0].items():
                client.log_metric(run_id, key, value, step=kwargs.get("step") or 0)
        elif method == "log_artifact":
            client.log_artifact(run_id, args[0], kwargs.get("artifact_path"))
        elif method == "log_dict":
            client.log_dict(run_id, *args)
        elif method == "set_tags":
            for key, value in args[0].items():
                client.set_tag(run_id, key, value)
        elif method in OUR_LOGGERS:
            import mlflow

            mlflow.set_tracking_uri(target)
            with mlflow.start_run(run_id=run_id):
                OUR_LOGGERS[method](*args, **kwargs)


def sync_pending(folder: Path, uri: str | None = None) -> list[str]:
    """Log the pending runs in `folder` into their store (or `uri`): into the run itself when the store took its
    start, else a new one; a synced file is removed. Returns the run ids."""
    from mlflow.tracking import MlflowClient

    synced = []
    for path in sorted(Path(folder).glob("*.json")):
        pending = json.loads(path.read_text())
        target = uri or pending["uri"]
        with store_lock(target):
            client = MlflowClient(target)
            if pending["run_id"] and run_exists(client, pending["run_id"]):
                run_id = pending["run_id"]
            else:
                experiment = experiment_id(client, target, pending["experiment"])
                run_id = client.create_run(experiment, run_name=pending["run_name"], tags=pending["tags"]).info.run_id
                for key, value in pending["params"].items():
                    client.log_param(run_id, key, value)
            replay(client, run_id, target, pending["calls"])
            client.set_terminated(run_id, pending.get("status", "FINISHED"))
        synced.append(run_id)
        path.unlink()
    return synced
