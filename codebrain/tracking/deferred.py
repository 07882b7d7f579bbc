"""Per-subject jobs' runs, journaled by the job and logged in batches.

A thousand subjects make thousands of short jobs. Each opening the SQLite store would import MLflow (seconds)
and queue at the store's lock behind every other job. A per-subject job (PER_SUBJECT_RULES) started by a
workflow invocation writes its run as a journal file instead: offline.py's pending format plus its start and
end times, status RUNNING until it ends. One process then logs every journal in one pass under one lock
(`sync_deferred`: when the invocation starts and ends, and whenever one of its jobs opens a run on the store,
as check_raw, build_slice_store and the trainings do). Each run nests under a "job group" run, one per rule and
invocation, so that an experiment with thousands of job runs still reads as one row per step.
"""

from __future__ import annotations

import json
import socket
import sys
from collections import defaultdict
from pathlib import Path

from codebrain.io import write_atomic
from codebrain.provenance import process_provenance
from codebrain.tracking.lock import StoreLockTimeout, store_lock
from codebrain.tracking.offline import error_line, pending_dir, replay
from codebrain.tracking.runs import experiment_id, process_alive

PER_SUBJECT_RULES = {"make_phantom_subject", "split_msd_subject", "register_subject", "extract_slices"}
GROUP_RULE = "job group"  # the rule tag of a group run; its job_group tag names the rule it groups
SEVERITY = ["FINISHED", "KILLED", "FAILED"]  # a group run ends with its worst job's status


def deferred_dir(uri: str) -> Path:
    """Where deferred runs wait: beside offline.py's pending runs."""
    return pending_dir(uri).parent / "mlflow-deferred"


def write_journal(path: Path, journal: dict) -> None:
    """A run waiting for the store, as one JSON file (a deferred run's journal, or offline.py's pending run)."""
    with write_atomic(path) as tmp:
        tmp.write_text(json.dumps(journal, indent=1, default=str))


def settled(journal: dict, written_s: float) -> dict | None:
    """The journal as it should be logged, or None while its job still runs: a RUNNING journal whose process is
    gone (a SIGKILL, an OOM kill) is KILLED, ended when it was last written."""
    if journal["status"] != "RUNNING":
        return journal
    tags = journal["tags"]
    if tags.get("host") == socket.gethostname() and process_alive(int(tags.get("pid", 0))):
        return None
    return {**journal, "status": "KILLED", "end_time": int(written_s * 1000)}


def group_run(client, experiment: str, parent: str, rule: str, start_time: int) -> str:
    """The invocation's group run for `rule`, made on first use (starting with its first job)."""
    found = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}' and tags.job_group = '{rule}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    tags = {**{k: str(v) for k, v in process_provenance().items()}, "rule": GROUP_RULE, "job_group": rule,
            "mlflow.parentRunId": parent, "mlflow.note.content": f"This invocation's {rule} jobs, one nested run each."}
    return client.create_run(experiment, start_time=start_time, run_name=f"{rule} jobs", tags=tags).info.run_id


def log_journal(client, uri: str, experiment: str, group: str, journal: dict) -> str:
    from mlflow.entities import Param

    tags = {**journal["tags"], "mlflow.parentRunId": group}
    run_id = client.create_run(experiment, start_time=journal["start_time"], run_name=journal["run_name"],
                               tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(key, value) for key, value in journal["params"].items()])
    replay(client, run_id, uri, journal["calls"])
    client.set_terminated(run_id, journal["status"], end_time=journal["end_time"])
    return run_id


def sync_deferred(uri: str) -> list[str]:
    """Log every finished journal of the store's deferred folder (one lock, one client), each under the group run
    of its invocation and rule; a logged journal is removed. Returns the new run ids."""
    folder = deferred_dir(uri)
    if not folder.is_dir() or not any(folder.glob("*.json")):
        return []
    from mlflow.tracking import MlflowClient

    logged = []
    with store_lock(uri):  # read under the lock: a concurrent pass has logged (and removed) what it saw
        batches = defaultdict(list)  # (experiment name, invocation run, rule) -> [(path, journal)]
        for path in sorted(folder.glob("*.json")):
            journal = settled(json.loads(path.read_text()), path.stat().st_mtime)
            if journal is not None:
                batches[journal["experiment"], journal["tags"]["mlflow.parentRunId"], journal["tags"]["rule"]].append(
                    (path, journal))
        client = MlflowClient(uri)
        for (name, parent, rule), members in batches.items():
            experiment = experiment_id(client, uri, name)
            group = client.get_run(group_run(client, experiment, parent, rule,
                                             min(journal["start_time"] for _, journal in members)))
            for path, journal in members:
                logged.append(log_journal(client, uri, experiment, group.info.run_id, journal))
                path.unlink()
            statuses = [journal["status"] for _, journal in members]
            if group.info.status in SEVERITY:  # a group run of an earlier pass keeps its worst job's status
                statuses.append(group.info.status)
            client.set_terminated(group.info.run_id, max(statuses, key=SEVERITY.index),
                                  end_time=max(journal["end_time"] for _, journal in members))
    return logged


def sync_in_passing(uri: str) -> None:
    """sync_deferred from a step, which a failing store must not fail: what it could not log waits for the next
    pass."""
    from codebrain.io import store_errors

    try:
        sync_deferred(uri)
    except (*store_errors(), StoreLockTimeout) as err:
        print(f"[codebrain] deferred runs not logged yet ({error_line(err)}); the next pass retries",
              file=sys.stderr)
