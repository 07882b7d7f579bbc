"""MLflow logging for pipeline steps: one run per step execution, only from the main process.

Tracking URI: the config's, else MLFLOW_TRACKING_URI, else a SQLite store under results/
(MLflow 3 refuses the old file store). Each run is tagged with the rule, dataset, config hash
and git commit, and its id goes into a small run record beside the step's outputs, so later
steps can link to it.

Parallel Snakemake jobs share one SQLite file: two first-time jobs race to create its schema
("duplicate column name") and concurrent writers hit "database is locked". Every MLflow call
on a SQLite store therefore holds an exclusive lock on <db>.lock; a tracking server needs none.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

from codebrain.data.nifti import write_atomic


def tracking_uri(configured: str | None, results: str | Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


@contextmanager
def sqlite_lock(uri: str):
    """Exclusive lock beside a sqlite:/// store for the duration of the block."""
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    """A thin MLflow run; a disabled Tracker (non-main processes) does nothing."""

    def __init__(self, enabled: bool, uri: str = "", experiment: str = "", run_name: str = "",
                 tags: dict | None = None, params: dict | None = None):
        self.enabled, self.run_id = enabled, None
        if not enabled:
            return
        import mlflow

        self.mlflow = mlflow
        self.locked = (lambda: sqlite_lock(uri)) if uri.startswith("sqlite:///") else nullcontext
        parent = os.environ.get("CODEBRAIN_PARENT_RUN_ID")  # our own variable: MLFLOW_RUN_ID would be resumed
        run_tags = dict(tags or {}, **({"mlflow.parentRunId": parent} if parent else {}))
        with self.locked():
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(experiment)
            self.run = mlflow.start_run(run_name=run_name, tags={k: str(v) for k, v in run_tags.items()})
            self.run_id = self.run.info.run_id
            if params:
                mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self.enabled:
            with self.locked():
                self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.enabled:
            with self.locked():
                self.mlflow.log_artifact(str(path), artifact_path=folder)

    def log_checkpoint(self, path: Path, max_bytes: int = 100 * 2**20) -> None:
        """Small checkpoints as artefacts; large ones by path and sha256 (no copy of weights into the store)."""
        if not self.enabled:
            return
        path = Path(path)
        if path.stat().st_size <= max_bytes:
            self.log_artifact(path, "checkpoint")
        else:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(2**24), b""):
                    digest.update(block)
            self.set_tags({"checkpoint.path": path.resolve(), "checkpoint.sha256": digest.hexdigest()})

    def log_dict(self, data: dict, name: str) -> None:
        if self.enabled:
            with self.locked():
                self.mlflow.log_dict(data, name)

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            with self.locked():
                self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def finish(self, record: str | Path | None, status: str = "FINISHED") -> None:
        """End the run and write the run record {run_id, tracking_uri} (the step's declared output)."""
        if not self.enabled:
            return
        with self.locked():
            self.mlflow.end_run(status=status)
        if record:
            with write_atomic(record) as tmp:
                tmp.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.mlflow.get_tracking_uri()}))
