"""MLflow experiments and runs: where the store is, the invocation's parent run, runs of killed jobs.

Tracking URI: the config's, else MLFLOW_TRACKING_URI, else a SQLite store under results/ (MLflow 3 refuses the
old file store). Each job's run (tracking.tracker) nests under its invocation's parent run, a per-subject job's
under its rule's group run there (tracking.deferred).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from codebrain.provenance import process_provenance
from codebrain.tracking.lock import store_lock

PARENT_RUN_VARIABLE = "CODEBRAIN_PARENT_RUN_ID"  # our own variable: MLFLOW_RUN_ID would be resumed, not nested


def tracking_uri(configured: str | None, results: str | Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


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
                                tags={k: str(v) for k, v in {**process_provenance(), **notes(tags), **tags}.items()})
        client.log_dict(run.info.run_id, config, "config.json")
    return run.info.run_id


def open_invocation(uri: str, experiment: str, tags: dict, config: dict) -> str:
    """A workflow invocation's parent run; its id goes to the jobs through the environment."""
    from codebrain.tracking.deferred import sync_deferred

    check_reachable(uri)
    sync_deferred(uri)  # what killed invocations' jobs journaled (KILLED where their process is gone)
    run_id = start_parent_run(uri, experiment, f"snakemake {time.strftime('%Y-%m-%d %H:%M:%S')}", tags, config)
    os.environ[PARENT_RUN_VARIABLE] = run_id  # inherited by every job the invocation starts, as is the store:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    print(f"MLflow: run {run_id} in experiment {experiment!r} at {uri}")
    return run_id


def close_invocation(uri: str, status: str) -> None:
    """The invocation's journaled job runs into the store, then its parent run ends."""
    run_id = os.environ.get(PARENT_RUN_VARIABLE)
    if run_id:
        from mlflow.tracking import MlflowClient

        from codebrain.tracking.deferred import sync_deferred

        sync_deferred(uri)
        with store_lock(uri):
            MlflowClient(uri).set_terminated(run_id, status)
