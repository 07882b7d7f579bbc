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
import functools
import hashlib
import importlib
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from codebrain.io import sha256sum, write_atomic


PARENT_RUN_VARIABLE = "CODEBRAIN_PARENT_RUN_ID"  # our own variable: MLFLOW_RUN_ID would be resumed, not nested


def tracking_uri(configured: str | None, results: str | Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


LOCK_TIMEOUT_VARIABLE = "CODEBRAIN_LOCK_TIMEOUT"  # seconds to wait for the SQLite store's lock (default 300)


class StoreLockTimeout(RuntimeError):
    pass


@contextmanager
def store_lock(uri: str, timeout_s: float | None = None):
    """Exclusive lock beside a sqlite:/// store for the duration of the block; a server needs none. The holder
    writes its pid, host and start time into the lock file, so a wait past timeout_s (default
    $CODEBRAIN_LOCK_TIMEOUT or 300 s) ends with an error that names who holds it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    if timeout_s is None:
        timeout_s = float(os.environ.get(LOCK_TIMEOUT_VARIABLE, 300))
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = lock_path.read_text().strip() or "unknown (an older codebrain)"
                    raise StoreLockTimeout(f"{lock_path}: MLflow store locked for over {timeout_s:g} s by {holder}; "
                                           f"stop that process or raise {LOCK_TIMEOUT_VARIABLE}") from None
                time.sleep(0.05)
        try:
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            yield
        finally:
            handle.truncate(0)
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # else MLflow 3's UI opens on GenAI traces
RUN_NOTES = {  # the run page's description: what the run is and which metric to look at first
    "workflow": "One `snakemake` invocation: every job it ran is a nested run below.",
    "train_stage1": "Stage I: E_posterior, quantiser, E_s, D_a against a PatchGAN. "
                    "Headline: val/psnr_stage1 (reconstruction from the true code, dB).",
    "cache_codes": "Stage I codes of every train/val slice. Headline: train/codes_used, train/perplexity.",
    "train_stage2": "Stage II: E_prior predicts every contrast's code. "
                    "Headline: val/psnr_stage2 (imputation, dB), val/code_accuracy.",
    "train_direct": "Baseline: the direct regressor (masked stack -> all contrasts). Headline: val/psnr_direct (dB).",
    "evaluate_model": "Every scenario on the test split. Headline: test/all/<method>/psnr (dB).",
    "impute_test_subjects": "Imputed NIfTI volumes of the test subjects (paths in imputed.tsv).",
    "train_segmenter": "Tumour U-Net on real full-contrast slices. Headline: val/dice_wt_2d.",
    "evaluate_segmentation": "Whole-tumour Dice with one contrast missing. Headline: test/<method>/dice_3d.",
}


def provenance() -> dict:
    """Where a run ran: host, process and Snakemake version (the git commit is tagged by the callers that know it).
    Host and pid let a later invocation tell a run whose process was killed (`mark_killed_runs`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        snakemake_version = version("snakemake")
    except PackageNotFoundError:
        snakemake_version = "none"
    return {"host": socket.gethostname(), "pid": os.getpid(), "snakemake_version": snakemake_version}


@functools.cache
def git_commit() -> str:
    """The commit of the package's checkout (tagged on every run, stored in checkpoints and BIDS sidecars); one
    `git` call per process."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def notes(tags: dict) -> dict:
    note = RUN_NOTES.get(tags.get("rule", ""))
    return {"mlflow.note.content": note} if note else {}


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail now, not after hours of training, when an MLflow server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(f"MLflow server {uri} is not reachable ({getattr(err, 'reason', err)}); start it, "
                              f"or set tracking.uri to another server (empty: a SQLite file in results/)") from None


def experiment_id(client, uri: str, experiment: str) -> str:
    """The experiment's id, created on first use. A SQLite store keeps its artefacts beside the
    database (MLflow's default is ./mlruns under whatever directory the job happens to run in)."""
    found = client.get_experiment_by_name(experiment)
    artifacts = None
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        artifacts = (database.parent / "mlartifacts").resolve().as_uri()
        if found and found.artifact_location != artifacts:
            rebase_artifacts(database, found.artifact_location, artifacts)
    if found:
        return found.experiment_id
    return client.create_experiment(experiment, artifact_location=artifacts, tags=EXPERIMENT_KIND)


def rebase_artifacts(database: Path, old: str, new: str) -> None:
    """A copied or moved results folder: its SQLite store still names the original folder's artefacts (MLflow
    keeps absolute artefact URIs); point the experiment and its runs at the ones beside this database, so that a
    copy never writes into the original."""
    import sqlite3

    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (new, old))
        connection.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE artifact_uri LIKE ?",
                           (new, len(old) + 1, old + "/%"))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def mark_killed_runs(client, experiment: str) -> list[str]:
    """Runs left RUNNING by a process of this host that no longer exists (a SIGKILL, a lost node) become KILLED,
    so that no run of a dead job stays RUNNING; returns their ids. Runs of other hosts are left alone."""
    host, killed = socket.gethostname(), []
    for run in client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        if tags.get("host") == host and tags.get("pid", "").isdigit() and not process_alive(int(tags["pid"])):
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    return killed


def start_parent_run(uri: str, experiment: str, run_name: str, tags: dict, config: dict) -> str:
    """The run that groups one workflow invocation's job runs (their mlflow.parentRunId); returns its id."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        client = MlflowClient(uri)
        mark_killed_runs(client, experiment_id(client, uri, experiment))
        run = client.create_run(experiment_id(client, uri, experiment), run_name=run_name,
                                tags={k: str(v) for k, v in {**provenance(), **notes(tags), **tags}.items()})
        client.log_dict(run.info.run_id, config, "config.json")
    return run.info.run_id


def open_invocation(uri: str, experiment: str, tags: dict, config: dict) -> str:
    """A workflow invocation's parent run; its id goes to the jobs through the environment."""
    check_reachable(uri)
    run_id = start_parent_run(uri, experiment, f"snakemake {time.strftime('%Y-%m-%d %H:%M:%S')}", tags, config)
    os.environ[PARENT_RUN_VARIABLE] = run_id  # inherited by every job the invocation starts, as is the store:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    print(f"MLflow: run {run_id} in experiment {experiment!r} at {uri}")
    return run_id


def close_invocation(uri: str, status: str) -> None:
    run_id = os.environ.get(PARENT_RUN_VARIABLE)
    if run_id:
        from mlflow.tracking import MlflowClient

        with store_lock(uri):
            MlflowClient(uri).set_terminated(run_id, status)


def error_line(err: Exception) -> str:
    """"Type: first line of the message": what a store's failure is called in one line (MLflow and SQLAlchemy
    messages run to many)."""
    message = str(err).strip()
    return f"{type(err).__name__}: {message.splitlines()[0] if message else ''}"


def pending_dir(uri: str) -> Path:
    """Where runs a failing store could not take wait for `codebrain sync-tracking`: beside a SQLite store, else
    results/mlflow-pending/ under the working directory (the project folder, for Snakemake's jobs)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlflow-pending"
    return Path("results") / "mlflow-pending"


class Tracker:
    """A thin MLflow run; a disabled Tracker (non-main processes) does nothing.

    A store that fails (locked, read-only, a server gone) never fails the step: from the first failing call on,
    what the run would have logged is kept and written at `finish` to pending_dir(uri) as one JSON file, with one
    line on stderr; `codebrain sync-tracking` (`sync_pending`) logs it once the store works again."""

    def __init__(self, enabled: bool, uri: str = "", experiment: str = "", run_name: str = "",
                 tags: dict | None = None, params: dict | None = None):
        self.enabled, self.run_id, self.uri, self.offline = enabled, None, uri, None
        if not enabled:
            return
        import mlflow

        self.mlflow = mlflow
        self.locked = lambda: store_lock(uri)
        parent = os.environ.get(PARENT_RUN_VARIABLE)
        run_tags = {**provenance(), **notes(tags or {}), **(tags or {}),
                    **({"mlflow.parentRunId": parent} if parent else {})}
        self.pending = {"uri": uri, "experiment": experiment, "run_name": run_name, "run_id": None,
                        "tags": {k: str(v) for k, v in run_tags.items()},
                        "params": {k: str(v)[:6000] for k, v in (params or {}).items()}, "calls": []}
        try:
            with self.locked():
                mlflow.set_tracking_uri(uri)
                mlflow.set_experiment(experiment_id=experiment_id(mlflow.MlflowClient(uri), uri, experiment))
                self.run = mlflow.start_run(run_name=run_name, tags=self.pending["tags"])
                self.run_id = self.pending["run_id"] = self.run.info.run_id
                if params:
                    mlflow.log_params(self.pending["params"])
        except Exception as err:  # MLflow, SQLAlchemy, the file system and the lock raise many types
            self.go_offline(err)

    def go_offline(self, err: Exception) -> None:
        self.offline = error_line(err)[:300]

    def send(self, method: str, *args, **kwargs) -> None:
        """One logging call (an MLflow function, or "module:function" of ours): to the store, or, once the store has
        failed, into the pending run."""
        if not self.enabled:
            return
        if self.offline is None:
            try:
                with self.locked():
                    logging_function(self.mlflow, method)(*args, **kwargs)
                return
            except Exception as err:
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
        self.send("codebrain.registry:log_imputer", str(Path(checkpoint).resolve()), name, kind, metrics)

    def log_store_input(self, store: Path, splits: list[str], context: str) -> None:
        self.send("codebrain.tracking:log_store_input", str(Path(store).resolve()), list(splits), context)

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
        self.send("end_run", status=status)
        entry = {"run_id": self.run_id, "tracking_uri": self.uri}
        if self.offline is not None:
            self.forget_active_run()
            self.pending["status"] = status
            folder = pending_dir(self.uri)
            path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.pending['run_name'].replace('/', '_')}.json"
            with write_atomic(path) as tmp:
                tmp.write_text(json.dumps(self.pending, indent=1, default=str))
            entry["pending"] = str(path)
            print(f"[codebrain] MLflow store {self.uri} failed ({self.offline}); the step's outputs are kept and its "
                  f"run waits in {path}: run `codebrain sync-tracking` when the store works again", file=sys.stderr)
        if record:
            with write_atomic(record) as tmp:
                tmp.write_text(json.dumps(entry))


def store_dataset(store: str | Path, split: str):
    """One split of a slice store as an MLflow dataset (metadata only: the arrays stay on disk): named
    <dataset folder>/<split>, its digest from store.json, the split's slice table and array shape, its shape in
    the schema."""
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.types.schema import Schema, TensorSpec

    store = Path(store).resolve()
    array = np.load(store / f"{split}.npy", mmap_mode="r")  # N x C x S x S
    rows = store / f"{split}.tsv"  # (subject, z) of each slice
    digest = hashlib.sha256((store / "store.json").read_bytes() + (rows.read_bytes() if rows.exists() else b"")
                            + str((split, array.shape, array.dtype.str)).encode())
    return MetaDataset(LocalArtifactDatasetSource(str(store)), name=f"{store.parent.name}/{split}",
                       digest=digest.hexdigest()[:16], schema=Schema([TensorSpec(array.dtype, array.shape, split)]))


def log_store_input(store: str, splits: list[str], context: str) -> None:
    """The slice store's splits as dataset inputs of the active run (the UI's Dataset column), tagged with the split."""
    import mlflow

    for split in splits:
        mlflow.log_input(store_dataset(store, split), context=context, tags={"split": split})


def logging_function(mlflow, method: str):
    """An MLflow function by name, or one of ours that logs into the active run, as "module:function" (imported
    when called: the registry sits above this module)."""
    if ":" in method:
        module, name = method.split(":")
        return getattr(importlib.import_module(module), name)
    return getattr(mlflow, method)


def run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


def sync_pending(folder: Path, uri: str | None = None) -> list[str]:
    """Log the runs a failing store could not take (Tracker's pending files in `folder`) into their store (or
    `uri`): into the run itself when the store took its start, else a new one; a synced file is removed. Returns
    the run ids. Uses the client API, so an active run of this process is left alone."""
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
            for method, args, kwargs in pending["calls"]:
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
                elif ":" in method:  # ours log into the active run
                    import mlflow

                    mlflow.set_tracking_uri(target)
                    with mlflow.start_run(run_id=run_id):
                        logging_function(mlflow, method)(*args, **kwargs)
            client.set_terminated(run_id, pending.get("status", "FINISHED"))
        synced.append(run_id)
        path.unlink()
    return synced
