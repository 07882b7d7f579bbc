"""Tracking under concurrency: jobs that share one SQLite store at once (issue 26)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from codebrain.tracking.deferred import GROUP_RULE, deferred_dir
from codebrain.tracking.runs import PARENT_RUN_VARIABLE, close_invocation, open_invocation

JOB = """
import json, sys, time
from codebrain.tracking.tracker import Tracker

uri, name, hold_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
start = time.perf_counter()
tracker = Tracker(True, uri, "concurrent", name, {"rule": "extract_slices", "subject": name}, {"size": 40})
tracker.log_metrics({"slices": 4})
tracking_s = time.perf_counter() - start
print("started", flush=True)
time.sleep(hold_s)  # the job's work
start = time.perf_counter()
tracker.log_dict({"subject": name}, "files.json")
tracker.finish(None)
tracking_s += time.perf_counter() - start
print(json.dumps({"tracking_s": tracking_s, "mlflow_imported": "mlflow" in sys.modules}))
"""


def run_jobs(uri: str, count: int, killed: int | None = None) -> list[dict]:
    """`count` slicing jobs' processes at once on one store (inside an invocation when its run id is in the
    environment); job `killed` is SIGKILLed mid-work. Their reports, in order."""
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, uri, f"job-{i}", "30" if i == killed else "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(count)]
    if killed is not None:
        assert jobs[killed].stdout.readline().strip() == "started"
        os.kill(jobs[killed].pid, signal.SIGKILL)
    reports = []
    for i, job in enumerate(jobs):
        out, err = job.communicate(timeout=300)
        assert "database is locked" not in err, err
        reports.append(json.loads(out.splitlines()[-1]) if i != killed else {})
        assert (job.returncode == -signal.SIGKILL) if i == killed else job.returncode == 0, err[-2000:]
    return reports


def test_eight_concurrent_per_subject_jobs_journal_their_runs_and_one_pass_logs_them(tmp_path, monkeypatch):
    """Inside an invocation, per-subject jobs never open the store: no MLflow import, milliseconds of tracking
    each, whatever the others do. The invocation's end logs all eight under one group run, the SIGKILLed one
    KILLED, none left RUNNING and no journal left behind."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(PARENT_RUN_VARIABLE, ""), monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after
    parent = open_invocation(uri, "concurrent", {"rule": "workflow"}, {})  # sets the variable the jobs inherit
    reports = run_jobs(uri, 8, killed=3)
    assert all(r["tracking_s"] < 1 and not r["mlflow_imported"] for r in reports if r), reports
    assert len(list(deferred_dir(uri).glob("*.json"))) == 8
    close_invocation(uri, "FINISHED")

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    jobs = {run.info.run_name: run for run in runs if run.data.tags["rule"] == "extract_slices"}
    (group,) = [run for run in runs if run.data.tags["rule"] == GROUP_RULE]
    assert sorted(jobs) == [f"job-{i}" for i in range(8)]
    assert {name: run.info.status for name, run in jobs.items()} == {
        f"job-{i}": "KILLED" if i == 3 else "FINISHED" for i in range(8)}
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs.values()} == {group.info.run_id}
    assert group.data.tags["mlflow.parentRunId"] == parent and group.info.status == "KILLED"
    assert jobs["job-0"].data.metrics == {"slices": 4.0} and jobs["job-0"].data.params == {"size": "40"}
    assert [a.path for a in client.list_artifacts(jobs["job-0"].info.run_id)] == ["files.json"]
    assert all(run.info.end_time >= run.info.start_time for run in runs)
    assert not list(deferred_dir(uri).glob("*.json"))


def test_eight_concurrent_jobs_that_open_the_store_themselves_lose_no_run(tmp_path, monkeypatch):
    """Outside an invocation (a command run by hand) every job opens the SQLite store under its lock: eight at
    once all end FINISHED, none offline, no "database is locked"."""
    monkeypatch.delenv(PARENT_RUN_VARIABLE, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reports = run_jobs(uri, 8)
    assert all(r["mlflow_imported"] for r in reports)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(run.info.run_name for run in runs) == [f"job-{i}" for i in range(8)]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert not (tmp_path / "mlflow-pending").exists()


def test_a_slicing_job_inside_an_invocation_imports_neither_torch_nor_mlflow(tmp_path):
    """The per-subject step as its rule runs it (a real BraTS 2018 case, the invocation's run id in the
    environment): its slices are written, its run is a journal, and neither torch nor MLflow was imported."""
    case = Path(__file__).parent / "data" / "realdata" / "brats2018" / "Brats18_TCIA01_425_1"
    kinds = {"T1": "t1", "T2": "t2", "FLAIR": "flair", "T1Gd": "t1ce", "seg": "seg"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = ("import sys; from codebrain.cli import main; code = main(sys.argv[1:]); "
              "print([m for m in ('torch', 'mlflow') if m in sys.modules]); sys.exit(code)")
    command = [sys.executable, "-c", script, "extract-slices", "--subject", "Brats18_TCIA01_425_1",
               *(f"--input={kind}={case / f'{case.name}_{suffix}.nii.gz'}" for kind, suffix in kinds.items()),
               "--contrasts", "T1", "T2", "FLAIR", "T1Gd", "--config", json.dumps({"spacing": [3, 3], "n_slices": 4,
                                                                                "size": 32}),
               "--out", str(tmp_path / "slices.npz"), "--dataset", "imports", "--results", str(tmp_path)]
    env = {**os.environ, PARENT_RUN_VARIABLE: "0" * 32, "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "slices.npz").exists() and len(list(deferred_dir(uri).glob("*.json"))) == 1
