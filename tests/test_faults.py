"""Fault injection (issue 14): each long step kind of the tiny DAG is SIGKILLed, together with the Snakemake
invocation that runs it, at a seeded random point of its work; the DAG is rerun and compared with the
uninterrupted run of the `workdir` fixture: the same files, byte for byte where the step is deterministic, no
stray files (in the results or the temporary folder), and the killed job's MLflow run KILLED, none RUNNING."""

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import CONTRASTS, MODEL, TINY, planned_jobs, snakemake, snakemake_command

from codebrain.checkpoints import save_checkpoint
from codebrain.io import write_atomic
from codebrain.models.config import ModelConfig
from codebrain.models.reconstructor import Reconstructor

SEED = 14
STEPS = {  # step kind: (rule, the job's MLflow run name, a target the job writes)
    "registration": ("register_subject", "register_subject/IXI001-Phantom-0001",
                     "results/tiny/registered/IXI001-Phantom-0001/qc.json"),
    "slicing": ("extract_slices", "extract_slices/IXI002-Phantom-0002",
                "results/tiny/slices/subjects/IXI002-Phantom-0002.npz"),
    "stage1": ("train_stage1", "train_stage1/codebrain", "results/tiny/models/codebrain/stage1.pt"),
    "code caching": ("cache_codes", "cache_codes/codebrain", "results/tiny/models/codebrain/codes/train.npy"),
    "stage2": ("train_stage2", "train_stage2/codebrain", "results/tiny/models/codebrain/stage2.pt"),
    "evaluation": ("evaluate_model", "evaluate_model/codebrain", "results/tiny/metrics/codebrain/summary.csv"),
    "imputation": ("impute_test_subjects", "impute_test_subjects/codebrain",
                   "results/tiny/imputed/codebrain"),
}
RNG = random.Random(SEED)
KILL_POINTS = {step: RNG.uniform(0.05, 0.75) for step in STEPS}  # the fraction of the job's tracked work done
KILL_WHOLE_INVOCATION = {step: RNG.random() < 0.5 for step in STEPS}  # else the job alone (as an OOM killer does)
NOT_COMPARED = ("logs/", "benchmarks/", "mlflow.db", "mlartifacts/")  # differ by design: times, run ids


def journaled_run(database: Path, run_name: str, status: str) -> tuple | None:
    """(journal name, pid, seconds) of a per-subject job's run not logged yet (tracking.deferred), or None."""
    for path in sorted((database.parent / "mlflow-deferred").glob("*.json"), reverse=True):
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):  # logged (removed) meanwhile
            journal = json.loads(path.read_text())
            if journal["run_name"] == run_name and journal["status"] == status:
                return path.name, int(journal["tags"]["pid"]), (journal.get("end_time", 0) - journal["start_time"]) / 1000
    return None


def job_run(database: Path, run_name: str, status: str) -> tuple | None:
    """(run id, or a journal's name, pid, seconds from start to end) of the newest run of that name and status,
    read without MLflow so that it can be polled every few milliseconds."""
    if journaled := journaled_run(database, run_name, status):
        return journaled
    if not database.exists():
        return None
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT r.run_uuid, t.value, r.end_time - r.start_time FROM runs r JOIN tags t ON "
                             "t.run_uuid = r.run_uuid AND t.key = 'pid' WHERE r.name = ? AND r.status = ? "
                             "ORDER BY r.start_time DESC LIMIT 1", (run_name, status)).fetchone()
    except sqlite3.OperationalError:  # the store is being created or written
        return None
    return row and (row[0], int(row[1]), (row[2] or 0) / 1000)


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under results/ that the steps own; a step's run record without its run id and store."""
    results, prints = folder / "results", {}
    for path in sorted(p for p in results.rglob("*") if p.is_file() and not p.is_symlink()):
        name = str(path.relative_to(results))
        if any(part in name for part in NOT_COMPARED):
            continue
        content = path.read_bytes()
        if name.endswith(".run.json"):
            record = {k: v for k, v in json.loads(content).items() if k not in ("run_id", "tracking_uri")}
            content = json.dumps(record, sort_keys=True).encode()
        prints[name] = hashlib.sha256(content).hexdigest()
    return prints


def kill_during(process: subprocess.Popen, database: Path, run_name: str, after_s: float, whole: bool,
                deadline_s=300) -> tuple[str, int]:
    """SIGKILL the job, or the invocation's whole process group, `after_s` seconds into the job's tracked work;
    returns the job's run id and pid."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and process.poll() is None:
        running = job_run(database, run_name, "RUNNING")
        if running:
            time.sleep(after_s)
            with contextlib.suppress(ProcessLookupError):  # the job may have ended in the meantime
                os.killpg(process.pid, signal.SIGKILL) if whole else os.kill(running[1], signal.SIGKILL)
            process.wait()
            return running[:2]
        time.sleep(0.005)
    raise AssertionError(f"{run_name} never started, or finished unseen (exit {process.poll()})")


def assert_same_registration(reference_qc: Path, rerun_qc: Path) -> None:
    """Same mutual information after registration to 0.01, and volumes that differ only at edges."""
    reference, rerun = (json.loads(qc.read_text())["contrasts"] for qc in (reference_qc, rerun_qc))
    for contrast, found in reference.items():
        assert abs(rerun[contrast]["mi_after"] - found["mi_after"]) < 0.01, contrast
        volumes = [nib.load(qc.parent / f"{contrast}.nii.gz").get_fdata() for qc in (reference_qc, rerun_qc)]
        assert np.corrcoef(volumes[0].ravel(), volumes[1].ravel())[0, 1] > 0.99, contrast


def run_status(database: Path, run_id: str) -> str:
    """The status of a run by id, or of a journaled run by its journal's name (logged or not)."""
    journal = database.parent / "mlflow-deferred" / run_id
    if journal.exists():
        return json.loads(journal.read_text())["status"]
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute("SELECT r.status FROM runs r LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = "
                          "'journal' WHERE r.run_uuid = ? OR t.value = ?", (run_id, run_id)).fetchone()[0]


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_a_killed_step_reruns_to_the_uninterrupted_result(workdir, tmp_path, step):
    rule, run_name, target = STEPS[step]
    path = tmp_path / "project"
    shutil.copytree(workdir[0], path, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    reference, database = fingerprint(path), path / "results" / "mlflow.db"
    work_s = job_run(database, run_name, "FINISHED")[2]
    temporary = tmp_path / "tmp"  # the jobs' temporary folder, to see what they leave there
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}
    whole = KILL_WHOLE_INVOCATION[step]

    delay = KILL_POINTS[step] * work_s
    for _ in range(3):  # force the job to run again and kill it mid-work; sooner if it ended first (a slower run)
        with open(tmp_path / "killed.out", "w") as output:
            process = subprocess.Popen(snakemake_command() + ["-d", str(path), target, "--force", "--configfile",
                                                              str(TINY)],
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env)
            run_id, _ = kill_during(process, database, run_name, delay, whole)
        # FINISHED: the kill came after the job's own end; KILLED: a journaled run the invocation's end has logged
        status_at_kill = run_status(database, run_id)
        if status_at_kill in ("RUNNING", "KILLED"):
            break
        snakemake(path, "--unlock")  # a killed Snakemake leaves its lock: the next try would be refused
        delay /= 4
    else:
        raise AssertionError(f"{run_name} ended before each of three kills")
    if not whole:
        assert process.returncode != 0 and not (path / target).exists(), "Snakemake kept a killed job's output"
    # a rerun redoes the killed job (the profile's rerun-incomplete after a killed Snakemake) and nothing else
    snakemake(path, "--unlock")
    assert planned_jobs(path, target) == {rule: 1}
    rerun = subprocess.run(snakemake_command() + ["-d", str(path), target, "--configfile", str(TINY)], env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    after = fingerprint(path)
    assert sorted(after) == sorted(reference), "stray or missing files after the rerun"
    changed = sorted(name for name in reference if after[name] != reference[name])
    if rule == "register_subject":  # ANTs is not repeatable to the bit, even seeded and on one thread
        assert_same_registration(workdir[0] / target, path / target)
        changed = [name for name in changed if "/registered/" not in name]
    assert changed == [], f"outputs that differ from the uninterrupted run: {changed}"
    # what the jobs make must not stay; torch keeps its compile cache there by design, and a SIGKILLed Snakemake
    # cannot remove its own scratch folder
    left = sorted(p.name for p in temporary.iterdir()
                  if not (p.name.startswith("torchinductor_") or whole and p.name.startswith("snakemake")))
    assert left == [], f"left in the temporary folder: {left}"
    assert run_status(database, run_id) == "KILLED"
    with sqlite3.connect(database) as db:
        assert not db.execute("SELECT name FROM runs WHERE status = 'RUNNING'").fetchall()


@pytest.mark.slow
def test_a_terminated_step_marks_its_run_failed_and_removes_its_temporary_files(ixi_phantom, tmp_path):
    """A plain `kill` (SIGTERM) mid-registration: the command unwinds (exit 143), its MLflow run is FAILED, and
    neither ANTs' folder nor a part file stays beside the outputs or in the temporary folder."""
    _, subjects = ixi_phantom
    temporary, out_dir, results = tmp_path / "tmp", tmp_path / "registered" / "IXI001", tmp_path / "results"
    temporary.mkdir()
    command = [sys.executable, "-m", "codebrain.cli", "register", "--reference", "T2", "--out-dir", str(out_dir),
               "--dataset", "terminated", "--results", str(results),
               *(f"--input={contrast}={subjects[1][contrast]}" for contrast in ("T1", "T2", "PD"))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "TMPDIR": str(temporary), "MLFLOW_TRACKING_URI": ""})
    database, deadline = results / "mlflow.db", time.time() + 120
    while not job_run(database, "register_subject/IXI001", "RUNNING"):
        assert process.poll() is None and time.time() < deadline, process.communicate()[0][-2000:]
        time.sleep(0.01)
    time.sleep(0.3)  # into ANTs' work: the phantom's registration takes seconds
    process.terminate()
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert job_run(database, "register_subject/IXI001", "FAILED")
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in temporary.iterdir() if not p.name.startswith("torchinductor_")]


def test_a_part_file_left_by_a_killed_writer_is_swept_by_the_next_write(tmp_path):
    (tmp_path / ".codes.npy.k1ll3d.part.npy").write_bytes(b"half written")
    (tmp_path / ".other.npy.k1ll3d.part.npy").write_bytes(b"another output's")
    with write_atomic(tmp_path / "codes.npy") as tmp:
        np.save(tmp, np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.npy.k1ll3d.part.npy", "codes.npy"]


def test_a_scratch_folder_left_by_a_killed_run_is_swept_and_third_party_temporary_files_go_there(tmp_path):
    """What MLflow's model logging stages (in tempfile's folder) lands beside the checkpoint, where the rerun
    sweeps what a SIGKILL left; the process's temporary folder is restored after."""
    import tempfile

    from codebrain.io import scratch_folder

    stale = tmp_path / ".stage2.pt.mlflow-k1ll3d"
    stale.mkdir()
    (stale / "MLmodel").write_text("half staged")
    before = tempfile.gettempdir()
    with scratch_folder(tmp_path, ".stage2.pt.mlflow-", as_tempdir=True) as scratch:
        assert not stale.exists() and scratch.parent == tmp_path
        staged = Path(tempfile.mkdtemp())  # as mlflow.utils.file_utils.TempDir does
        assert staged.parent == scratch
    assert tempfile.gettempdir() == before and not scratch.exists() and not staged.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_saved_twice_is_the_same_bytes(tmp_path):
    """So that a step rerun after a kill can be compared with the uninterrupted run to the bit."""
    config = ModelConfig(contrasts=CONTRASTS, **MODEL)
    model = Reconstructor(config)
    for name in ("a.pt", "b.pt"):
        save_checkpoint(tmp_path / name, "stage1", model.state_dict(), config, 6, {"psnr": 20.0})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
