"""Real Snakemake runs of the data DAG on the tiny phantom config (tests/config/tiny.yaml)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "config" / "tiny.yaml"
TINY_BRATS = REPO / "tests" / "config" / "tiny-brats.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]


def snakemake(workdir, *args, configfile=TINY, check=True):
    result = subprocess.run(SNAKEMAKE + ["-d", str(workdir), "--configfile", str(configfile), *args],
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def planned_jobs(workdir, *args, configfile=TINY) -> dict[str, int]:
    """Job counts per rule from a dry run."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args, configfile=configfile)
    text = out.stdout + out.stderr
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny-dag")
    planned = planned_jobs(workdir)
    snakemake(workdir)
    return workdir, planned


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
EXPERIMENTS = 2  # tiny.yaml: codebrain and its CE ablation, and the direct regressor beside them
ONE_SUBJECT_CHAIN = {"check_raw": 1, "register_subject": 1, "extract_slices": 1, "build_slice_store": 1,
                     **{rule: EXPERIMENTS for rule in {**TRAINING, **EVALUATION}}, "evaluate_model": EXPERIMENTS + 1,
                     "train_direct": 1, "compare_experiments": 1, "all": 1}


def test_changed_raw_file_reruns_only_that_subject(workdir):
    path, _ = workdir
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


@pytest.mark.parametrize("stage,rerun", [
    ("stage2", {"train_stage2": 1, **EVALUATION, "compare_experiments": 1, "all": 1}),
    ("stage1", {**TRAINING, **EVALUATION, "compare_experiments": 1, "all": 1}),
])
def test_changed_training_parameter_reruns_that_stage_and_after(workdir, tmp_path, stage, rerun):
    path, _ = workdir
    changed = changed_config(tmp_path, lambda c: c["experiments"]["codebrain"][stage].update(steps=7))
    assert planned_jobs(path, configfile=changed) == rerun


def test_changed_slicing_parameter_spares_registration(workdir, tmp_path):
    path, _ = workdir
    changed = changed_config(tmp_path, lambda c: c["slices"].update(size=48))
    planned = snakemake(path, "-n", "--quiet", "rules", configfile=changed).stdout
    assert re.search(r"^extract_slices\s+4$", planned, re.M)
    assert "register_subject" not in planned and "make_phantom_subject" not in planned


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["dataset"]["contrasts"].append("T3"), r"'T3' is not one of"),
    (lambda c: c["slices"].update(size="big"), r"'big' is not of type 'integer'"),
    (lambda c: c["dataset"].pop("root"), r"'root' is a required property"),
    (lambda c: c["dataset"].update(reference="FLAIR"), r"dataset.reference: FLAIR is not one of dataset.contrasts"),
    (lambda c: c["experiments"]["codebrain"]["model"].update(widht=8), r"experiments.codebrain: model: unknown keys \['widht'\]"),
    (lambda c: c["experiments"]["codebrain"].update(protocol="preprint"), r"'preprint' is not one of"),
])
def test_bad_config_fails_before_any_job(tmp_path, edit, message):
    config = json.loads(json.dumps(yaml.safe_load(TINY.read_text())))
    edit(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, configfile=bad, check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr)
    assert not (tmp_path / "results").exists()


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_imputed_volumes_sit_on_the_reference_grid(workdir):
    import pandas as pd

    path, _ = workdir
    out = path / "results" / "tiny"
    imputed = pd.read_csv(out / "imputed" / "codebrain" / "imputed.tsv", sep="\t", dtype={"scenario": str})
    test_subjects = pd.read_csv(out / "slices" / "test.tsv", sep="\t").subject.unique()
    assert len(imputed) == 9 * len(test_subjects)  # 6 scenarios, 9 (scenario, target) pairs per subject
    for row in imputed.itertuples():
        volume, reference = nib.load(path / row.path), nib.load(out / "registered" / row.subject / "T2.nii.gz")
        assert volume.shape == reference.shape and np.allclose(volume.affine, reference.affine)
        assert row.scenario[["T1", "T2", "PD"].index(row.target)] == "0"
    metrics = pd.read_csv(out / "metrics" / "codebrain" / "summary.csv")
    assert set(metrics.group) == {"O->O", "M->O", "ALL"}


def test_every_model_step_is_an_mlflow_run(workdir):
    from mlflow.tracking import MlflowClient

    path, _ = workdir
    client = MlflowClient(f"sqlite:///{path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    per_rule = {}
    for run in runs:
        per_rule.setdefault(run.data.tags["rule"], set()).add(run.data.tags["experiment"])
    for rule in ("train_stage1", "cache_codes", "train_stage2", "evaluate_model", "impute_test_subjects"):
        assert per_rule.get(rule) == {"codebrain", "ce"} | ({"direct"} if rule == "evaluate_model" else set()), rule
    assert per_rule.get("train_direct") == {"direct"}


def test_experiments_side_by_side(workdir):
    import pandas as pd

    path, _ = workdir
    metrics = path / "results" / "tiny" / "metrics"
    table = pd.read_csv(metrics / "summary.csv")
    assert set(table.experiment) == {"-", "codebrain", "ce", "direct"}
    assert set(table[table.experiment == "direct"].method) == {"direct regressor"}
    assert len(table[table.method == "zero imputation"]) == 3  # once, not per experiment
    each = pd.read_csv(metrics / "ce" / "summary.csv").set_index(["group", "method"])
    row = table[(table.experiment == "ce") & (table.method == "CodeBrain") & (table.group == "ALL")].iloc[0]
    assert row.psnr == pytest.approx(each.loc[("ALL", "CodeBrain"), "psnr"])
    assert "| ce | CodeBrain |" in (metrics / "summary.md").read_text()


def test_restacked_store_slices_give_back_the_registered_volume(workdir):
    """Slices -> volume is the inverse of volume -> slices: the test subject's own T1 slices, restacked,
    equal the registered T1 inside the sliced window (up to float16 rounding)."""
    import pandas as pd

    from codebrain.evaluation.volumes import restack

    path, _ = workdir
    store = path / "results" / "tiny" / "slices"
    rows = pd.read_csv(store / "test.tsv", sep="\t")
    subject = rows.subject.iloc[0]
    mine = rows[rows.subject == subject]
    geometry = pd.read_csv(store / "geometry.tsv", sep="\t").set_index("subject").loc[subject]
    low, high = pd.read_csv(store / "normalisation.tsv", sep="\t").set_index(["subject", "contrast"]).loc[
        (subject, "T1"), ["low", "high"]]
    slices = np.load(store / "test.npy")[mine["index"].to_numpy(), 0]  # T1
    reference = nib.load(path / "results" / "tiny" / "registered" / subject / "T1.nii.gz")
    volume = restack(slices, mine.z.to_numpy(), (geometry.x0, geometry.y0), low, high, reference)
    back, original = volume.get_fdata(), reference.get_fdata()
    inside = back != 0
    assert inside.sum() > 0.5 * len(mine) * 40 * 40 * 0.3  # a real part of the window holds brain/head
    assert np.abs(back[inside] - original[inside]).max() <= 1e-3 * (high - low) + 1e-6
    assert np.allclose(volume.affine, reference.affine)


def codebrain_cli(*args):
    return subprocess.run([sys.executable, "-m", "codebrain.cli", *map(str, args)], capture_output=True, text=True)


def test_impute_a_users_own_scans(workdir, tmp_path):
    path, _ = workdir
    out = path / "results" / "tiny"
    model = out / "models" / "codebrain" / "stage2.pt"
    raw = {c: out / "raw" / f"IXI-{c}" / f"IXI001-Phantom-0001-{c}.nii.gz" for c in ("T1", "T2", "PD")}

    result = codebrain_cli("impute", "--model", model, "--input", f"T2={raw['T2']}", "--input", f"PD={raw['PD']}",
                           "--target", "T1", "--out", tmp_path / "t1.nii.gz")
    assert result.returncode == 0, result.stderr
    assert "outside the 4 middle slices the model was trained on" in result.stdout
    imputed, reference = nib.load(tmp_path / "t1.nii.gz"), nib.load(raw["T2"])
    assert imputed.shape == reference.shape and np.allclose(imputed.affine, reference.affine)
    data = imputed.get_fdata()
    assert 0 <= data.min() and data.max() <= 1 and data.max() > 0.2

    result = codebrain_cli("impute", "--model", model, "--input", f"T2={raw['T2']}", "--input", f"PD={raw['PD']}",
                           "--target", "T1", "--out", tmp_path / "skip.nii.gz", "--outside", "skip")
    assert "only slices" in result.stdout
    assert (nib.load(tmp_path / "skip.nii.gz").get_fdata() > 0).any(axis=(0, 1)).sum() < (data > 0).any(axis=(0, 1)).sum()

    result = codebrain_cli("impute", "--model", model, "--input", f"T1={raw['T1']}", "--input", f"T2={raw['T2']}",
                           "--target", "PD", "--out", tmp_path / "pd.nii.gz", "--register")
    assert result.returncode == 0, result.stderr
    assert nib.load(tmp_path / "pd.nii.gz").shape == nib.load(raw["T1"]).shape


@pytest.mark.parametrize("inputs,target,message", [
    (["T2", "PD"], "FLAIR", r"unknown contrast\(s\) \['FLAIR'\]: this model knows \['T1', 'T2', 'PD'\]"),
    (["T2", "PD"], "PD", r"--target PD is also an input"),
    (["T1", "T2"], "PD", r"voxel grid .* differs .* pass --register"),
])
def test_impute_refuses_bad_requests(workdir, tmp_path, inputs, target, message):
    path, _ = workdir
    out = path / "results" / "tiny"
    pairs = [x for c in inputs for x in ("--input", f"{c}={out / 'raw' / f'IXI-{c}' / f'IXI001-Phantom-0001-{c}.nii.gz'}")]
    result = codebrain_cli("impute", "--model", out / "models" / "codebrain" / "stage2.pt", *pairs, "--target", target,
                           "--out", tmp_path / "x.nii.gz")
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "x.nii.gz").exists()


def test_impute_names_a_missing_model(tmp_path):
    result = codebrain_cli("impute", "--model", tmp_path / "none.pt", "--input", "T1=a.nii.gz", "--target", "T2",
                           "--out", tmp_path / "x.nii.gz")
    assert result.returncode == 2 and "none.pt: no such checkpoint" in result.stderr


@pytest.fixture(scope="module")
def brats_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny-brats-dag")
    planned = planned_jobs(workdir, configfile=TINY_BRATS)
    snakemake(workdir, configfile=TINY_BRATS)
    return workdir, planned


def test_labelled_dataset_adds_the_segmentation_branch(brats_workdir):
    """BraTS-like phantom: no registration (co-registered data), a segmenter, Dice for every 3 -> 1
    scenario with the contrast zero-filled, imputed by each experiment, or real; logged to MLflow."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    path, planned = brats_workdir
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
    client = MlflowClient(f"sqlite:///{path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-brats").experiment_id])
    rules = {run.data.tags["rule"] for run in runs}
    assert {"train_segmenter", "evaluate_segmentation", "train_direct"} <= rules
    assert planned_jobs(path, configfile=TINY_BRATS) == {}
