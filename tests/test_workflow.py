"""Real Snakemake runs of the whole DAG on the tiny phantom configs (tests/config/tiny.yaml, tiny-brats.yaml):
planning, reruns, resume, config errors, MLflow runs, the report and profiles."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers import REPO, TINY, TINY_BRATS, planned_jobs, snakemake, snakemake_command, workflow_copy

from codebrain.tracking.deferred import GROUP_RULE


def test_one_registration_job_per_subject(workdir):
    _, planned = workdir
    assert planned["register_subject"] == 4 and planned["make_phantom_subject"] == 4
    assert planned["extract_slices"] == 4 and planned["check_raw"] == 1


def test_outputs_and_nothing_left_to_do(workdir):
    path, _ = workdir
    out = path / "results" / "tiny"
    train = np.load(out / "slices" / "train.npy", mmap_mode="r")
    assert train.shape == (2 * 4, 3, 40, 40) and train.dtype == np.float16
    assert len((out / "manifest.tsv").read_text().strip().splitlines()) == 1 + 4 * 3
    assert len(list((out / "benchmarks" / "register_subject").glob("*.tsv"))) == 4
    assert planned_jobs(path) == {}


TRAINING = {"train_stage1": 1, "cache_codes": 1, "train_stage2": 1}  # per experiment
EVALUATION = {"evaluate_model": 1, "impute_test_subjects": 1}
EXPERIMENTS = 1  # tiny.yaml: one CodeBrain experiment, and the direct regressor beside it
ONE_SUBJECT_CHAIN = {"check_raw": 1, "register_subject": 1, "extract_slices": 1, "build_slice_store": 1,
                     **{rule: EXPERIMENTS for rule in {**TRAINING, **EVALUATION}}, "evaluate_model": EXPERIMENTS + 1,
                     "train_direct": 1, "compare_experiments": 1, "all": 1}


def test_no_job_runs_beside_one_that_takes_every_core(workdir):
    """--cores 2: a 2-thread training job has the machine to itself (Snakemake 9.15 ran two such jobs at
    once, each at a tenth of its speed). Replays the first invocation's log: starts and finishes."""
    path, _ = workdir
    log = next(text for f in sorted((path / ".snakemake" / "log").glob("*.snakemake.log"))
               if "Finished jobid" in (text := f.read_text()))
    running, two_thread_jobs = {}, 0
    for block in re.split(r"\n(?=\[)", log):
        finished = re.search(r"^Finished jobid: (\d+)", block, re.M)
        started = re.search(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)", block + "\n", re.M)
        if started:
            threads = int(m[1]) if (m := re.search(r"^    threads: (\d+)", block, re.M)) else 1
            assert sum(running.values()) + threads <= 2, f"{started[1]} started beside {running}"
            running[started[2]] = threads
            two_thread_jobs += threads == 2
        if finished:
            running.pop(finished[1])
    assert two_thread_jobs >= 5  # the trainings, evaluations and imputation


@pytest.mark.slow
def test_changed_raw_file_reruns_only_that_subject(workdir, tmp_path):
    """On a copy of the tiny DAG's folder, so that the other tests keep seeing the models it trained."""
    path = tmp_path / "edited"
    shutil.copytree(workdir[0], path, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    raw = path / "results" / "tiny" / "raw" / "IXI-PD" / "IXI002-Phantom-0002-PD.nii.gz"
    image = nib.load(raw)
    data = np.asanyarray(image.dataobj).copy()
    data[data.shape[0] // 2, data.shape[1] // 2, :] += 7  # a re-exported scan: new content
    nib.save(nib.Nifti1Image(data, image.affine, image.header), raw)
    assert planned_jobs(path) == ONE_SUBJECT_CHAIN
    result = snakemake(path, "-n")
    assert "wildcards: subject=IXI002-Phantom-0002" in result.stdout
    assert "wildcards: subject=IXI001-Phantom-0001" not in result.stdout
    snakemake(path)
    assert planned_jobs(path) == {}


def test_touched_raw_file_reruns_by_mtime_above_checksum_size(workdir):
    """Snakemake checksums inputs up to --max-checksum-file-size (1 MB) and ignores a bare touch
    of those; real scans are larger, so for them the modification time decides."""
    path, _ = workdir
    raw = path / "results" / "tiny" / "raw" / "IXI-T1" / "IXI003-Phantom-0003-T1.nii.gz"
    later = time.time() + 5
    os.utime(raw, (later, later))
    assert planned_jobs(path) == {}  # content unchanged, checksum recorded: nothing to do
    assert planned_jobs(path, "--max-checksum-file-size", "0") == ONE_SUBJECT_CHAIN


def test_training_chain_runs_once_per_experiment(workdir):
    path, planned = workdir
    assert {rule: planned[rule] for rule in TRAINING} == {rule: EXPERIMENTS for rule in TRAINING}
    models = path / "results" / "tiny" / "models" / "codebrain"
    for name in ("stage1.pt", "stage2.pt", "codes/train.npy", "codes/codes.json", "stage1.run.json"):
        assert (models / name).exists(), name
    assert "step 6: val PSNR" in (path / "results" / "tiny" / "logs" / "train_stage2" / "codebrain.log").read_text()


def changed_config(tmp_path, edit) -> Path:
    config = json.loads(json.dumps(yaml.safe_load(TINY.read_text())))  # YAML aliases -> independent copies
    edit(config)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    return changed


def test_every_phantom_key_reaches_its_jobs(workdir, tmp_path):
    """A phantom key past flavour, downsample and seed (here the noise) regenerates the cohort; more subjects
    only add jobs."""
    path, _ = workdir
    noisier = changed_config(tmp_path, lambda c: c["phantom"].update(noise=0.03))
    assert planned_jobs(path, configfile=noisier)["make_phantom_subject"] == 4


@pytest.mark.parametrize("stage,rerun", [
    ("stage2", {"train_stage2": 1, **EVALUATION, "compare_experiments": 1, "all": 1}),
    ("stage1", {**TRAINING, **EVALUATION, "compare_experiments": 1, "all": 1}),
])
def test_changed_training_parameter_reruns_that_stage_and_after(workdir, tmp_path, stage, rerun):
    path, _ = workdir
    changed = changed_config(tmp_path, lambda c: c["experiments"]["codebrain"][stage].update(steps=7))
    assert planned_jobs(path, configfile=changed) == rerun


def test_changed_evaluation_parameter_reruns_only_evaluation(workdir, tmp_path):
    path, _ = workdir
    changed = changed_config(tmp_path, lambda c: c.setdefault("evaluation", {}).update(split="val"))
    assert planned_jobs(path, configfile=changed) == {"evaluate_model": EXPERIMENTS + 1, "impute_test_subjects": EXPERIMENTS,
                                                      "compare_experiments": 1, "all": 1}


def test_another_tracking_store_reruns_nothing(workdir, tmp_path):
    """The store reaches the jobs through the environment, not through rule params."""
    config = yaml.safe_load(TINY.read_text())
    config["tracking"] = {"uri": f"sqlite:///{tmp_path / 'elsewhere.db'}"}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(json.loads(json.dumps(config))))
    assert planned_jobs(workdir[0], configfile=changed) == {}


def test_edited_model_source_reruns_training_not_preprocessing(workdir):
    """An edited FSQ: CodeBrain's training steps and what follows, but no slicing and not the regressor, whose
    command never imports it (tests/test_sources.py edits every module)."""
    path, _ = workdir
    source = workflow_copy() / "codebrain" / "models" / "fsq.py"
    original = source.read_text()
    source.write_text(original + "\nEDITED = 1\n")  # code: a comment alone reruns nothing (tests/test_sources.py)
    try:
        planned = planned_jobs(path)
    finally:
        source.write_text(original)
    assert planned == {"train_stage1": EXPERIMENTS, "cache_codes": EXPERIMENTS, "train_stage2": EXPERIMENTS,
                       "evaluate_model": EXPERIMENTS + 1, "impute_test_subjects": EXPERIMENTS,
                       "compare_experiments": 1, "all": 1}
    assert planned_jobs(path) == {}


@pytest.mark.slow
def test_killed_training_job_resumes_from_its_checkpoint(workdir, tmp_path):
    """Kill Snakemake and its training job mid-run: nothing looks finished, and the rerun picks the
    job up from its last Accelerate checkpoint instead of step 0."""
    import signal

    path = tmp_path / "killed"
    shutil.copytree(workdir[0], path, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    config = yaml.safe_load(TINY.read_text())
    config["experiments"]["codebrain"]["stage1"] = {"steps": 400, "batch_size": 4, "checkpoint_every": 20,
                                                    "validate_every": 400, "log_every": 20}
    configfile = tmp_path / "long.yaml"
    configfile.write_text(yaml.safe_dump(json.loads(json.dumps(config))))
    target = "results/tiny/models/codebrain/stage1.pt"
    state = path / f"{target}.state"
    shutil.rmtree(state, ignore_errors=True)
    output = open(tmp_path / "snakemake.out", "w")
    process = subprocess.Popen(snakemake_command() + ["-d", str(path), target, "--configfile", str(configfile)],
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not list(state.glob("checkpoint-*")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    assert process.poll() is None, (tmp_path / "snakemake.out").read_text()[-3000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert list(state.glob("checkpoint-*")), "no checkpoint was written before the kill"
    assert not (path / target).exists(), "the job finished before it could be killed"
    snakemake(path, "--unlock", configfile=configfile)
    assert planned_jobs(path, target, configfile=configfile) == {"train_stage1": 1}
    snakemake(path, target, configfile=configfile)
    log = (path / "results/tiny/logs/train_stage1/codebrain.log").read_text()
    resumed = re.search(r"resumed from \S+checkpoint-(\d+) at step (\d+)", log)
    assert resumed and int(resumed[2]) >= 20, log[-2000:]
    assert (path / target).exists() and not state.exists()
    # the SIGKILLed job's and invocation's MLflow runs are marked KILLED by the next invocation, none left RUNNING
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], max_results=5000)
    killed = {run.data.tags.get("rule") for run in runs if run.info.status == "KILLED"}
    assert {"train_stage1", "workflow"} <= killed and not [r for r in runs if r.info.status == "RUNNING"]


def test_changed_slicing_parameter_spares_registration(workdir, tmp_path):
    path, _ = workdir
    changed = changed_config(tmp_path, lambda c: c["slices"].update(size=48))
    planned = snakemake(path, "-n", "--quiet", "rules", configfile=changed).stdout
    assert re.search(r"^extract_slices\s+4$", planned, re.M)
    assert "register_subject" not in planned and "make_phantom_subject" not in planned


def test_a_store_that_cannot_be_written_fails_at_start_up_in_one_line(tmp_path):
    """A tracking store Snakemake cannot create (here its folder is a file) stops the invocation before any job,
    naming the URI and the cause, without a traceback."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = json.loads(json.dumps(yaml.safe_load(TINY.read_text())))
    config["tracking"] = {"uri": f"sqlite:///{blocker}/mlflow.db"}
    configfile = tmp_path / "unwritable.yaml"
    configfile.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, configfile=configfile, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(rf"config tracking.uri: sqlite:///{re.escape(str(blocker))}/mlflow.db: the MLflow store cannot "
                     rf"be written \((FileExistsError|NotADirectoryError)", output), output[-2000:]
    assert "Traceback" not in output and not (tmp_path / "results").exists()


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_every_model_step_is_an_mlflow_run(workdir):
    from mlflow.tracking import MlflowClient

    path, _ = workdir
    client = MlflowClient(f"sqlite:///{path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = {run.info.run_id: run for run in runs if run.data.tags["rule"] == "workflow"}
    groups = {run.info.run_id: run for run in runs if run.data.tags["rule"] == GROUP_RULE}
    jobs = [run for run in runs if run.data.tags["rule"] not in ("workflow", GROUP_RULE)]
    assert all(group.data.tags["mlflow.parentRunId"] in parents for group in groups.values())
    for run in jobs:  # a per-subject job under its rule's group run, every other job under the invocation's run
        parent = run.data.tags.get("mlflow.parentRunId")
        per_subject = run.data.tags["rule"] in ("make_phantom_subject", "register_subject", "extract_slices")
        assert (groups[parent].data.tags["job_group"] == run.data.tags["rule"]) if per_subject else parent in parents
    first = min(parents.values(), key=lambda run: run.info.start_time).info.run_id
    trained_first = {run.data.tags["experiment"] for run in jobs if run.data.tags["rule"] in ("train_stage1", "train_direct")
                     and run.data.tags["mlflow.parentRunId"] == first}
    assert trained_first == {"codebrain", "direct"}, "the first invocation's parent holds both trainings"
    assert all(run.data.tags["host"] and run.data.tags["snakemake_version"] for run in runs)
    assert all(run.info.status == "FINISHED" for run in parents.values())
    per_rule = {}
    for run in jobs:
        per_rule.setdefault(run.data.tags["rule"], set()).add(run.data.tags.get("experiment"))
    for rule in ("train_stage1", "cache_codes", "train_stage2", "evaluate_model", "impute_test_subjects"):
        assert per_rule.get(rule) == {"codebrain"} | ({"direct"} if rule == "evaluate_model" else set()), rule
    assert per_rule.get("train_direct") == {"direct"}
    subjects = {run.data.tags["rule"]: set() for run in jobs}
    for run in jobs:
        subjects[run.data.tags["rule"]].add(run.data.tags.get("subject"))
    for rule in ("make_phantom_subject", "register_subject", "extract_slices"):
        assert len(subjects[rule]) == 4, rule  # one run per subject
    register = next(run for run in jobs if run.data.tags["rule"] == "register_subject")
    assert register.data.metrics["T1/mi_after"] > register.data.metrics["T1/mi_before"]
    assert {"check_raw", "build_slice_store", "compare_experiments"} <= set(subjects)


def test_experiments_side_by_side(workdir):
    import pandas as pd

    path, _ = workdir
    metrics = path / "results" / "tiny" / "metrics"
    table = pd.read_csv(metrics / "summary.csv")
    assert set(table.experiment) == {"-", "codebrain", "direct"}
    assert set(table[table.experiment == "direct"].method) == {"direct regressor"}
    assert len(table[table.method == "zero imputation"]) == 3  # once, not per experiment
    for experiment, method in (("codebrain", "CodeBrain"), ("direct", "direct regressor")):
        each = pd.read_csv(metrics / experiment / "summary.csv").set_index(["group", "method"])
        row = table[(table.experiment == experiment) & (table.method == method) & (table.group == "ALL")].iloc[0]
        assert row.psnr == pytest.approx(each.loc[("ALL", method), "psnr"])
        assert f"| {experiment} | {method} |" in (metrics / "summary.md").read_text()


def test_summary_shows_training_flops_and_wall_time_per_method(workdir):
    """FLOPs from the checkpoints' counts, wall time from the training jobs' Snakemake benchmarks."""
    import pandas as pd
    import torch

    path, _ = workdir
    results = path / "results" / "tiny"
    table = pd.read_csv(results / "metrics" / "summary.csv")
    rows = table[table.group == "ALL"].set_index(["experiment", "method"])
    stage1 = torch.load(results / "models" / "codebrain" / "stage1.pt", weights_only=True)["metrics"]["train/flops"]
    stage2 = torch.load(results / "models" / "codebrain" / "stage2.pt", weights_only=True)["metrics"]["train/flops"]
    assert rows.loc[("codebrain", "CodeBrain (Stage I)"), "train_flops"] == pytest.approx(stage1)
    assert rows.loc[("codebrain", "CodeBrain"), "train_flops"] == pytest.approx(stage1 + stage2)
    direct = torch.load(results / "models" / "direct" / "direct.pt", weights_only=True)["metrics"]["train/flops"]
    assert rows.loc[("direct", "direct regressor"), "train_flops"] == pytest.approx(direct) and direct > 0
    from codebrain.training.budget import config_flops  # the count before training = what the runs counted

    planned = config_flops(yaml.safe_load(TINY.read_text()))
    assert planned["codebrain"] == {"stage1": stage1, "stage2": stage2} and planned["direct"]["direct"] == direct
    benchmarks = results / "benchmarks"
    seconds = sum(pd.read_csv(benchmarks / job / "codebrain.tsv", sep="\t")["s"].iloc[-1]
                  for job in ("train_stage1", "cache_codes", "train_stage2"))
    assert rows.loc[("codebrain", "CodeBrain"), "train_wall_s"] == pytest.approx(seconds, rel=1e-3)
    assert np.isnan(rows.loc[("-", "zero imputation"), "train_flops"])
    kept = {name: torch.load(results / "models" / name / f"{file}.pt", weights_only=True)["step"]
            for name, file in (("codebrain", "stage1"), ("codebrain", "stage2"), ("direct", "direct"))}
    assert rows.loc[("codebrain", "CodeBrain (Stage I)"), "selected_step"] == kept["codebrain"]
    assert rows.loc[("direct", "direct regressor"), "selected_step"] == kept["direct"] > 0
    line = next(li for li in (results / "metrics" / "summary.md").read_text().splitlines()
                if li.startswith("| direct | direct regressor |"))
    assert line.split("|")[-3].strip() == f"{direct / 1e15:.4g}"


def test_convergence_study_reads_the_runs_validation_curves(workdir, tmp_path):
    """bench/convergence.py on the tiny DAG's store: a curve per training run, the last point at the FLOPs the
    checkpoint counted (Stage II's with Stage I's added)."""
    import torch

    path, _ = workdir
    figure = tmp_path / "convergence.png"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "convergence.py"), "results/tiny", "--out", figure],
                            cwd=path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    import matplotlib.pyplot as plt

    assert plt.imread(figure)[..., :3].std() > 0.05  # drawn, not blank
    models = path / "results" / "tiny" / "models"
    flops = {name: torch.load(models / name[0] / f"{name[1]}.pt", weights_only=True)["metrics"]["train/flops"]
             for name in [("codebrain", "stage1"), ("codebrain", "stage2"), ("direct", "direct")]}
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[3].strip()
            for line in result.stdout.splitlines() if line.startswith("| codebrain") or line.startswith("| direct")}
    stage1, stage2 = flops[("codebrain", "stage1")], flops[("codebrain", "stage2")]
    assert float(rows[("codebrain", "Stage I (own code: ceiling)")]) == pytest.approx(stage1 / 1e15, rel=1e-3)
    assert float(rows[("codebrain", "CodeBrain (Stage II)")]) == pytest.approx((stage1 + stage2) / 1e15, rel=1e-3)
    assert float(rows[("direct", "direct regressor")]) == pytest.approx(flops[("direct", "direct")] / 1e15, rel=1e-3)
    only = subprocess.run([sys.executable, str(REPO / "bench" / "convergence.py"), "results/tiny", "--out", figure,
                           "--experiments", "direct"], cwd=path, capture_output=True, text=True)
    assert [line.split("|")[1].strip() for line in only.stdout.splitlines()[2:]] == ["direct"]


def test_subject_count_study_reads_each_learners_scores_steps_and_validation(workdir, tmp_path):
    """bench/subject_count.py on the tiny DAG (one size: its whole training split): each learner's test scores
    from summary.csv, its kept step and validation PSNR from its checkpoint, the gap direct minus CodeBrain."""
    import pandas as pd
    import torch

    path, _ = workdir
    figure = tmp_path / "subjects.png"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "subject_count.py"), "--configfile", TINY,
                             "--out", figure], cwd=path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    results = path / "results" / "tiny"
    table = pd.read_csv(results / "metrics" / "subject_count.csv").set_index("learner")
    summary = pd.read_csv(results / "metrics" / "summary.csv")
    summary = summary[summary.group == "ALL"].set_index(["experiment", "method"])
    train_subjects = json.loads((results / "slices" / "store.json").read_text())["splits"]["train"]["subjects"]
    assert sorted(table.index) == ["direct", "paper", "stage1"] and set(table.subjects) == {train_subjects}
    assert table.loc["paper", "psnr"] == pytest.approx(summary.loc[("codebrain", "CodeBrain"), "psnr"], abs=1e-4)
    assert table.loc["stage1", "psnr_brain_3d"] == pytest.approx(
        summary.loc[("codebrain", "CodeBrain (Stage I)"), "psnr_brain_3d"], abs=1e-4)
    stage2 = torch.load(results / "models" / "codebrain" / "stage2.pt", weights_only=True)
    assert table.loc["paper", "selected_step"] == stage2["step"]
    assert table.loc["stage1", "val_psnr_one_missing"] == pytest.approx(
        stage2["stage1"]["metrics"]["val/psnr_stage1_one_missing"], abs=1e-4)
    gap = summary.loc[("direct", "direct regressor"), "psnr"] - summary.loc[("codebrain", "CodeBrain"), "psnr"]
    assert f"{gap:+.2f} dB at {train_subjects}" in result.stdout
    import matplotlib.pyplot as plt

    assert plt.imread(figure)[..., :3].std() > 0.05  # drawn, not blank

    # --earlier: an earlier run's rows are kept for experiments this run did not evaluate, replaced for the rest
    earlier = table.reset_index()
    earlier.loc[earlier.learner == "paper", "psnr"] = -1.0
    tuned = earlier[earlier.learner == "paper"].assign(learner="tuned", experiment="codebrain-tuned-elsewhere", psnr=30.0)
    pd.concat([earlier, tuned]).to_csv(tmp_path / "earlier.csv", index=False)
    result = subprocess.run([sys.executable, str(REPO / "bench" / "subject_count.py"), "--configfile", TINY,
                             "--out", figure, "--earlier", tmp_path / "earlier.csv"], cwd=path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = pd.read_csv(results / "metrics" / "subject_count.csv").set_index("learner")
    assert sorted(merged.index) == ["direct", "paper", "stage1", "tuned"]
    assert merged.loc["tuned", "psnr"] == 30.0
    assert merged.loc["paper", "psnr"] == pytest.approx(table.loc["paper", "psnr"], abs=1e-4)


def test_subject_count_trend_crosses_where_the_line_through_the_gaps_does():
    """Gaps of 3, 2 and 1 dB at 4, 8 and 16 subjects fall 1 dB per doubling: zero at 32 subjects."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("subject_count", REPO / "bench" / "subject_count.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    rows = [("paper", n, 20.0 + k) for k, n in enumerate((4, 8, 16))] + \
           [("direct", n, 23.0) for n in (4, 8, 16)]
    trend = study.gap_trend(pd.DataFrame(rows, columns=["learner", "subjects", "psnr"]))
    assert trend["gaps"] == {4: 3.0, 8: 2.0, 16: 1.0}
    assert trend["slope_per_decade"] == pytest.approx(-1 / np.log10(2))
    assert trend["crossing"] == pytest.approx(32.0)
    widening = pd.DataFrame([("paper", 4, 20.0), ("paper", 8, 20.0), ("direct", 4, 21.0), ("direct", 8, 22.0)],
                            columns=["learner", "subjects", "psnr"])
    assert study.gap_trend(widening)["crossing"] is None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, artefacts proxied), as a lab would run it."""
    import socket
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                               "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"))
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        raise RuntimeError("mlflow server did not start: " + (folder / "server.log").read_text()[-2000:])
    yield uri
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def brats_workdir(tmp_path_factory, mlflow_server):
    """The tiny BraTS-like DAG, tracked on the MLflow server over HTTP."""
    workdir = tmp_path_factory.mktemp("tiny-brats-dag")
    config = yaml.safe_load(TINY_BRATS.read_text())
    config["tracking"] = {"uri": mlflow_server}
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(json.loads(json.dumps(config))))
    planned = planned_jobs(workdir, configfile=configfile)
    snakemake(workdir, configfile=configfile)
    return workdir, planned, configfile, mlflow_server


@pytest.mark.slow
def test_labelled_dataset_adds_the_segmentation_branch(brats_workdir):
    """BraTS-like phantom: no registration (co-registered data), a segmenter, Dice for every 3 -> 1
    scenario with the contrast zero-filled, imputed by each experiment, or real; logged to MLflow."""
    import pandas as pd

    path, planned, configfile, uri = brats_workdir
    assert "register_subject" not in planned
    assert planned["train_segmenter"] == 1 and planned["evaluate_segmentation"] == 1
    out = path / "results" / "tiny-brats"
    dice = pd.read_csv(out / "segmentation" / "dice.csv", dtype={"scenario": str})
    assert len(dice) == 4 * 4  # 4 missing contrasts x (zero-filled, codebrain, direct, all real)
    assert sorted(dice.scenario.unique()) == ["0111", "1011", "1101", "1110"]
    assert set(dice.method) == {"zero-filled", "codebrain", "direct", "all real"}
    assert (dice[dice.method == "all real"].dice_3d_vs_full == 1).all()
    scenarios = pd.read_csv(out / "metrics" / "codebrain" / "scenarios.csv", dtype={"scenario": str})
    assert len(scenarios[scenarios.method == "CodeBrain"]) == 28  # 14 scenarios for 4 contrasts
    assert planned_jobs(path, configfile=configfile) == {}


@pytest.mark.slow
def test_report_holds_the_tables_figures_and_captions(brats_workdir, tmp_path):
    path, _, configfile, _ = brats_workdir
    report = tmp_path / "report.html"
    snakemake(path, "--report", str(report), configfile=configfile)
    html = report.read_text()
    for name in ("dice.csv", "scenarios.csv", "summary.csv", "exemplars.png"):
        assert name in html, name
    assert "Whole-tumour Dice" in html and "one row per (scenario" in html  # captions from workflow/report/


@pytest.mark.slow
def test_every_rule_is_on_the_mlflow_server(brats_workdir):
    """Over HTTP: every job's run, with its metrics and artefacts, under one parent run."""
    from mlflow.tracking import MlflowClient

    path, planned, _, uri = brats_workdir
    assert not (path / "results" / "mlflow.db").exists(), "nothing should bypass the server"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny-brats").experiment_id])
    by_rule = {}
    for run in runs:
        by_rule.setdefault(run.data.tags["rule"], []).append(run)
    groups = {run.info.run_id: run.data.tags["job_group"] for run in by_rule.pop(GROUP_RULE)}  # one per rule
    assert sorted(groups.values()) == ["extract_slices", "make_phantom_subject"]
    expected = {"workflow": 1, "make_phantom_subject": 4, "check_raw": 1, "extract_slices": 4, "build_slice_store": 1,
                "train_stage1": 1, "cache_codes": 1, "train_stage2": 1, "train_direct": 1, "evaluate_model": 2,
                "impute_test_subjects": 1, "train_segmenter": 1, "evaluate_segmentation": 1, "compare_experiments": 1}
    assert {rule: len(found) for rule, found in by_rule.items()} == expected
    assert expected == {rule: n for rule, n in planned.items() if rule != "all"} | {"workflow": 1}
    parent = by_rule["workflow"][0].info.run_id
    for rule, found in by_rule.items():
        if rule != "workflow":
            assert all(run.data.tags["mlflow.parentRunId"] == parent or groups.get(run.data.tags["mlflow.parentRunId"])
                       == rule for run in found), rule
    stage2 = by_rule["train_stage2"][0]
    assert "val/psnr_stage2" in stage2.data.metrics and stage2.data.params["model.code_dim"] == "3"
    assert {a.path for a in client.list_artifacts(stage2.info.run_id)} >= {"config.json", "checkpoint"}
    segmentation = by_rule["evaluate_segmentation"][0]
    assert {a.path for a in client.list_artifacts(segmentation.info.run_id)} >= {"dice.csv", "dice.md"}
    assert any(k.endswith("/dice_3d") for k in segmentation.data.metrics)
    store = by_rule["build_slice_store"][0]
    assert {a.path for a in client.list_artifacts(store.info.run_id)} == {"store.json"}
    assert by_rule["check_raw"][0].data.metrics["subjects"] == 4


@pytest.mark.slow
def test_models_are_registered_and_served_by_the_mlflow_server(brats_workdir, tmp_path):
    """The registry on the server: a version per experiment, loaded by models:/ URI in a fresh process over HTTP."""
    from mlflow.tracking import MlflowClient

    path, _, _, uri = brats_workdir
    client = MlflowClient(uri)
    assert {model.name for model in client.search_registered_models()} >= {"tiny-brats-codebrain", "tiny-brats-direct"}
    slices = path / "results" / "tiny-brats" / "slices" / "test.npy"
    script = ("import mlflow, numpy as np; "
              f"model = mlflow.pyfunc.load_model('models:/tiny-brats-codebrain@champion'); "
              f"x = np.load({str(slices)!r}).astype(np.float32); "
              "out = model.predict({c: x[:, i] if c != 'FLAIR' else 0 * x[:, i] for i, c in "
              "enumerate(['T1', 'T2', 'FLAIR', 'T1Gd'])}); print(sorted(out), out['FLAIR'].shape == x[:, 2].shape)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['FLAIR'] True"


def test_an_up_to_date_invocation_adds_no_run(workdir):
    from mlflow.tracking import MlflowClient

    path, _ = workdir
    client = MlflowClient(f"sqlite:///{path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    before = len(client.search_runs([experiment]))
    result = snakemake(path)
    assert "Nothing to be done" in result.stdout + result.stderr
    assert len(client.search_runs([experiment])) == before


def test_local_profile_plans_the_dag(workdir, tmp_path):
    path, _ = workdir
    changed = changed_config(tmp_path, lambda c: c["experiments"]["codebrain"]["stage2"].update(steps=5))
    result = snakemake(path, "-n", "--workflow-profile", str(REPO / "workflow" / "profiles" / "local"), "-p",
                       configfile=changed)
    assert "train-stage2" in result.stdout and "with-gpus --count 0" in result.stdout


@pytest.mark.slow
def test_a_second_invocation_on_the_same_folder_is_refused(tmp_path):
    """Snakemake's own lock: while one invocation works in a folder, a second one there stops with Snakemake's
    message, and the first finishes untouched (its targets up to date afterwards)."""
    target = "results/tiny/slices/store.json"
    first = subprocess.Popen(snakemake_command() + ["-d", str(tmp_path), target, "--configfile", str(TINY)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    locks = tmp_path / ".snakemake" / "locks"
    deadline = time.time() + 120
    while not (locks.exists() and any(locks.iterdir())) and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the first invocation ended before the second could start"
    second = snakemake(tmp_path, target, check=False)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout + second.stderr
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-2000:]
    assert planned_jobs(tmp_path, target) == {}
