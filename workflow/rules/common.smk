# Helpers for the workflow steps: subject discovery, per-subject inputs, parameters.
import json
import os
import re
from functools import cache
from pathlib import Path

import pandas as pd

from codebrain.data import layouts
from codebrain.sources import code_hash
from codebrain.tracking.runs import close_invocation, tracking_uri
from codebrain.training.config import split_experiments
from codebrain.workflow import (ACCELERATE_CONFIGS, experiment_json, found_raw_subjects, launch_args, msd_sources,
                                phantom_subjects, raw_subjects, start_invocation)

# Real data: dataset.root must hold the subjects, or download.urls fetch them first (the `download_raw` checkpoint);
# a missing or empty root with nothing to download stops here, in one line, before any job.
FOUND_AT_START = None if "phantom" in config else found_raw_subjects(config, bool(config["download"]["urls"]))
DOWNLOAD = "phantom" not in config and FOUND_AT_START is None

DATASET = config["dataset"]
TRACKING_URI = tracking_uri(config["tracking"]["uri"], config["results"])
OUT = f"{config['results']}/{DATASET['name']}"
CONTRASTS = DATASET["contrasts"]
REFERENCE = DATASET["reference"]
RAW_KINDS = CONTRASTS + (["seg"] if DATASET["labels"] else [])
REGISTER = config["registration"]["method"] != "none"
MSD = DATASET["layout"] == "msd"  # 4D volumes, split into BraTS-named files under {OUT}/raw first
SPLITS = ["train", "val", "test"]
PACKAGE = Path(workflow.basedir) / "codebrain"
os.environ[ACCELERATE_CONFIGS] = str(Path(workflow.basedir) / "config" / "accelerate")  # read by the jobs' shell
LAUNCH_ARGS = launch_args(config)


def command_code(command):
    """A step's rerun trigger: the hash of the package code `codebrain <command>` runs (codebrain/sources.py;
    Snakemake's own code trigger sees only the shell text)."""
    return code_hash(command, PACKAGE)


@cache
def get_raw_subjects():
    """{subject: {kind: path}}: the phantom's, those found at start-up, or, when the root was still empty, those
    found once the `download_raw` checkpoint has run."""
    if FOUND_AT_START is not None:
        return FOUND_AT_START
    if DOWNLOAD:
        checkpoints.download_raw.get()
    return raw_subjects(config)


def get_subjects():
    return sorted(get_raw_subjects())


def get_raw_files(wildcards):
    return get_raw_subjects()[wildcards.subject]


def get_all_raw_files(wildcards):
    return [path for files in get_raw_subjects().values() for path in files.values()]


@cache
def get_msd_sources():
    """{subject: {"channels": 4D volume, "seg": labels}} of a Decathlon folder (layout msd)."""
    return msd_sources(config)


def msd_outputs():
    files = layouts.msd_split_files(f"{OUT}/raw", "{subject}", RAW_KINDS)
    return {k: str(p) for k, p in files.items()}


def phantom_outputs():
    files = layouts.phantom_subject_files(config["phantom"]["flavour"], DATASET["root"], "{subject}", RAW_KINDS)
    return {k.replace(".", "_"): str(p) for k, p in files.items()}


def cli_inputs(files):
    return " ".join(f"--input {kind}={path}" for kind, path in files.items())


def slice_input_files(subject):
    """Registered volumes (or the raw ones where the data come co-registered), plus labels."""
    if REGISTER:
        files = {c: f"{OUT}/registered/{subject}/{c}.nii.gz" for c in CONTRASTS}
    else:
        files = {c: get_raw_subjects()[subject][c] for c in CONTRASTS}
    if DATASET["labels"]:
        files["seg"] = get_raw_subjects()[subject]["seg"]
    return files


def get_slice_inputs(wildcards):
    return slice_input_files(wildcards.subject)


@cache
def split_table():
    path = config["splits"]["table"]
    return pd.read_csv(path, sep="\t").set_index("subject") if path else None


def get_z_range(wildcards):
    """--z-range FIRST LAST from the split table (the authors' slices), else middle K (empty)."""
    table = split_table()
    if table is None or wildcards.subject not in table.index:
        return ""
    row = table.loc[wildcards.subject]
    return f"--z-range {int(row.first_slice)} {int(row.last_slice)}"


def get_store_subjects():
    """Subjects that enter the slice store: all, or those the split table names."""
    table = split_table()
    subjects = get_subjects()
    return [s for s in subjects if s in table.index] if table is not None else subjects


def get_download_marker():
    return str(Path(config["download"]["dest"] or Path(OUT, "downloads"), ".complete"))


EXPERIMENTS = config["experiments"]
CODEBRAIN_EXPERIMENTS, DIRECT_EXPERIMENTS = split_experiments(EXPERIMENTS)


def with_gpus(command):
    """The shell command of a step that may use GPUs: it first claims {resources.gpu} free devices."""
    return f"codebrain with-gpus --count {{resources.gpu}} -- {command}"


def one_of(names):
    """Wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def model_checkpoint(experiment):
    """What evaluation reads: CodeBrain's Stage II checkpoint, or the direct regressor's."""
    kind = "direct" if experiment in DIRECT_EXPERIMENTS else "stage2"
    return f"{OUT}/models/{experiment}/{kind}.pt"


TRAINING_JOBS = {"stage1": ["train_stage1"], "stage2": ["train_stage1", "cache_codes", "train_stage2"],
                 "direct": ["train_direct"]}  # the jobs behind each method of an experiment


def method_benchmarks():
    """{"<experiment>/<method>": its training jobs' benchmark files}: the wall times metrics/summary.md shows."""
    methods = {**{name: ["stage1", "stage2"] for name in CODEBRAIN_EXPERIMENTS},
               **{name: ["direct"] for name in DIRECT_EXPERIMENTS}}
    return {f"{name}/{method}": [f"{OUT}/benchmarks/{job}/{name}.tsv" for job in TRAINING_JOBS[method]]
            for name in sorted(methods) for method in methods[name]}


def training_benchmarks(wildcards):
    """Every training job's benchmark file, once."""
    return sorted({path for files in method_benchmarks().values() for path in files})


def get_experiment_json(name, stage):
    return experiment_json(EXPERIMENTS[name], stage)


ONE_GPU = min(1, config["training"]["gpus"])  # evaluation, imputation and segmentation jobs: one GPU when training uses GPUs


def get_tracking_args(wildcards):
    """MLflow experiment and default store; the tracking URI reaches the jobs through MLFLOW_TRACKING_URI
    (set at start-up), so pointing the jobs at another server reruns nothing."""
    return f"--dataset {DATASET['name']} --results {config['results']}"


def get_reference_volumes():
    """{subject: the volume whose grid imputations are written on}: the registered (or raw) reference."""
    return {s: slice_input_files(s)[REFERENCE] for s in get_store_subjects()}


def get_final_outputs():
    imputed = expand(f"{OUT}/imputed/{{experiment}}", experiment=CODEBRAIN_EXPERIMENTS)
    segmentation = [f"{OUT}/segmentation/dice.csv"] if DATASET["labels"] else []
    return [f"{OUT}/manifest.tsv", f"{OUT}/metrics/summary.csv"] + imputed + segmentation
