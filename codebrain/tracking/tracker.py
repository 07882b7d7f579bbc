"""One MLflow run per step execution, only from the main process, that never fails the step over the store.

Each run is tagged with the rule, dataset, config hash and git commit, and its id goes into a small run record
beside the step's outputs, so later steps can link to it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from codebrain.io import sha256sum, store_errors, write_atomic
from codebrain.provenance import process_provenance
from codebrain.tracking.deferred import PER_SUBJECT_RULES, deferred_dir, sync_in_passing, write_journal
from codebrain.tracking.lock import StoreLockTimeout, store_lock
from codebrain.tracking.offline import error_line, logging_function, pending_dir
from codebrain.tracking.runs import PARENT_RUN_VARIABLE, experiment_id, notes


class Tracker:
    """A thin MLflow run; a disabled Tracker (non-main processes) does nothing.

    A store that fails (locked, read-only, a server gone: io.store_errors) never fails the step; a bug of ours does,
    with its traceback. From the first failing call on,
    what the run would have logged is kept and written at `finish` to pending_dir(uri) as one JSON file, with one
    line on stderr; `codebrain sync-tracking` (`sync_pending`) logs it once the store works again.

    Inside a workflow invocation a per-subject job's Tracker (deferred.PER_SUBJECT_RULES) neither touches the store
    nor imports MLflow: its run is a journal file from start to end, which the next Tracker to open the store (or
    the invocation's end) logs with the others in one pass (tracking.deferred)."""

    def __init__(self, enabled: bool, uri: str = "", experiment: str = "", run_name: str = "",
                 tags: dict | None = None, params: dict | None = None):
        self.enabled, self.run_id, self.uri, self.offline, self.journal = enabled, None, uri, None, None
        if not enabled:
            return
        parent = os.environ.get(PARENT_RUN_VARIABLE)
        run_tags = {**process_provenance(), **notes(tags or {}), **(tags or {}),
                    **({"mlflow.parentRunId": parent} if parent else {})}
        self.pending = {"uri": uri, "experiment": experiment, "run_name": run_name, "run_id": None,
                        "tags": {k: str(v) for k, v in run_tags.items()},
                        "params": {k: str(v)[:6000] for k, v in (params or {}).items()}, "calls": []}
        if parent and (tags or {}).get("rule") in PER_SUBJECT_RULES:
            self.journal = deferred_dir(uri) / f"{parent}-{os.getpid()}-{time.time_ns()}.json"
            self.pending["tags"]["journal"] = self.journal.name  # the logged run names the file it came from
            self.pending.update(start_time=int(time.time() * 1000), status="RUNNING")
            write_journal(self.journal, self.pending)
            return
        import mlflow

        self.mlflow = mlflow
        self.locked = lambda: store_lock(uri)
        if parent:
            sync_in_passing(uri)  # the per-subject runs journaled so far
        try:
            with self.locked():
                mlflow.set_tracking_uri(uri)
                mlflow.set_experiment(experiment_id=experiment_id(mlflow.MlflowClient(uri), uri, experiment))
                self.run = mlflow.start_run(run_name=run_name, tags=self.pending["tags"])
                self.run_id = self.pending["run_id"] = self.run.info.run_id
                if params:
                    mlflow.log_params(self.pending["params"])
        except (*store_errors(), StoreLockTimeout) as err:
            self.go_offline(err)

    def go_offline(self, err: Exception) -> None:
        self.offline = error_line(err)[:300]

    def send(self, method: str, *args, **kwargs) -> None:
        """One logging call (an MLflow function or one of offline.OUR_LOGGERS, by name): to the store, or, once the
        store has failed, into the pending run."""
        if not self.enabled:
            return
        if self.offline is None and self.journal is None:
            try:
                with self.locked():
                    logging_function(self.mlflow, method)(*args, **kwargs)
                return
            except (*store_errors(), StoreLockTimeout) as err:
                self.go_offline(err)
        self.pending["calls"].append([method, list(args), kwargs])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.send("log_metrics", {k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.send("log_artifact", str(Path(path).resolve()), artifact_path=folder)

    def log_checkpoint(self, path: Path, max_bytes: int = 100 * 2**20) -> None:
        """Small checkpoints as artefacts; large ones by path and sha256 (no copy of weights into the store)."""
        if not self.enabled:
            return
        path = Path(path)
        if path.stat().st_size <= max_bytes:
            self.log_artifact(path, "checkpoint")
        else:
            self.set_tags({"checkpoint.path": path.resolve(), "checkpoint.sha256": sha256sum(path)})

    def log_imputer(self, checkpoint: Path, name: str, kind: str, metrics: dict) -> None:
        """The trained imputer as an MLflow model of this run, registered as `name` (codebrain.registry)."""
        self.send("log_imputer", str(Path(checkpoint).resolve()), name, kind, metrics)

    def log_store_input(self, store: Path, splits: list[str], context: str) -> None:
        self.send("log_store_input", str(Path(store).resolve()), list(splits), context)

    def log_dict(self, data: dict, name: str) -> None:
        self.send("log_dict", data, name)

    def set_tags(self, tags: dict) -> None:
        self.send("set_tags", {k: str(v) for k, v in tags.items()})

    def forget_active_run(self) -> None:
        """The store never got end_run: drop the run from MLflow's active-run stack without calling the store (which
        mlflow.end_run would), so that this process can start another run (in-process callers, the tests)."""
        stack = self.mlflow.tracking.fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id == self.run_id:
            stack.pop()

    def finish(self, record: str | Path | None, status: str = "FINISHED") -> None:
        """End the run and write the run record {run_id, tracking_uri[, pending]} (the step's declared output)."""
        if not self.enabled:
            return
        entry = {"run_id": self.run_id, "tracking_uri": self.uri}
        if self.journal is not None:
            self.pending.update(status=status, end_time=int(time.time() * 1000))
            write_journal(self.journal, self.pending)
            entry["deferred"] = str(self.journal)
        else:
            self.send("end_run", status=status)
        if self.offline is not None:
            self.forget_active_run()
            self.pending["status"] = status
            folder = pending_dir(self.uri)
            path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.pending['run_name'].replace('/', '_')}.json"
            write_journal(path, self.pending)
            entry["pending"] = str(path)
            print(f"[codebrain] MLflow store {self.uri} failed ({self.offline}); the step's outputs are kept and its "
                  f"run waits in {path}: run `codebrain sync-tracking` when the store works again", file=sys.stderr)
        if record:
            with write_atomic(record) as tmp:
                tmp.write_text(json.dumps(entry))
