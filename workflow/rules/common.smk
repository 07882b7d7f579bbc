# Helpers for the workflow steps: subject discovery, per-subject inputs, parameters.
import hashlib
import json
import re
from functools import cache
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError

from codebrain.data import layouts
from codebrain.data.phantom import FLAVOURS
from codebrain.tracking import tracking_uri
from codebrain.training.config import DirectExperiment, parse_experiment

DATASET = config["dataset"]
TRACKING_URI = tracking_uri(config["tracking"]["uri"], config["results"])
OUT = f"{config['results']}/{DATASET['name']}"
CONTRASTS = DATASET["contrasts"]
REFERENCE = DATASET["reference"]
RAW_KINDS = CONTRASTS + (["seg"] if DATASET["labels"] else [])
REGISTER = config["registration"]["method"] != "none"
SPLITS = ["train", "val", "test"]
PACKAGE = Path(workflow.basedir) / "codebrain"
ACCELERATE_CONFIGS = Path(workflow.basedir) / "config" / "accelerate"

if REFERENCE not in CONTRASTS:
    raise ValueError(f"config dataset.reference: {REFERENCE} is not one of dataset.contrasts {CONTRASTS}")
if "phantom" in config:
    _missing = set(RAW_KINDS) - set(FLAVOURS[config["phantom"]["flavour"]]) - {"seg"}
    if _missing or (DATASET["labels"] and config["phantom"]["flavour"] != "brats"):
        raise ValueError(f"config phantom.flavour: {config['phantom']['flavour']} phantoms do not have "
                         f"{sorted(_missing) or 'labels'} (dataset.contrasts / dataset.labels)")


def source_hash(*modules):
    """Hash of the package sources behind a step (Snakemake's code trigger sees only shell text)."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update((PACKAGE / module).read_bytes())
    return digest.hexdigest()[:16]


@cache
def phantom_subjects():
    flavour = config["phantom"]["flavour"]
    return {layouts.phantom_subject_id(flavour, i): i for i in range(1, config["phantom"]["n_subjects"] + 1)}


@cache
def raw_subjects():
    """{subject: {kind: path}} for the configured raw data (the phantom's paths, or discovered)."""
    if "phantom" in config:
        flavour = config["phantom"]["flavour"]
        return {s: {k: str(p) for k, p in layouts.phantom_subject_files(flavour, DATASET["root"], s, RAW_KINDS).items()
                    if k in RAW_KINDS}
                for s in phantom_subjects()}
    found = layouts.discover(DATASET["root"], DATASET["layout"], CONTRASTS, DATASET["on_missing_contrast"],
                             DATASET["labels"])
    return {s: {k: str(p) for k, p in files.items()} for s, files in found.items()}


def get_subjects():
    return sorted(raw_subjects())


def get_raw_files(wildcards):
    return raw_subjects()[wildcards.subject]


def get_all_raw_files(wildcards):
    return [path for files in raw_subjects().values() for path in files.values()]


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
        files = {c: raw_subjects()[subject][c] for c in CONTRASTS}
    if DATASET["labels"]:
        files["seg"] = raw_subjects()[subject]["seg"]
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
    return str(Path(config["download"].get("dest", Path(OUT, "downloads")), ".complete"))


EXPERIMENTS = config["experiments"]
TRAINING_SOURCES = [f"{folder}/{p.name}" for folder in ("models", "training") for p in sorted((PACKAGE / folder).glob("*.py"))]
TRAINING_SOURCES += ["evaluation/scenarios.py", "data/dataset.py", "tracking.py"]
PRIOR_KEYS = ("prior_width", "prior_enc_blocks", "prior_middle_blocks", "prior_loss")

DIRECT_EXPERIMENTS = []
for _name, _section in EXPERIMENTS.items():  # fail at start-up, naming the key, not hours into a job
    try:
        if isinstance(parse_experiment(_section, CONTRASTS), DirectExperiment):
            DIRECT_EXPERIMENTS.append(_name)
    except (TypeError, ValueError) as _err:
        raise ValueError(f"config experiments.{_name}: {_err}") from None
CODEBRAIN_EXPERIMENTS = sorted(set(EXPERIMENTS) - set(DIRECT_EXPERIMENTS))


def one_of(names):
    """Wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def model_checkpoint(experiment):
    """What evaluation reads: CodeBrain's Stage II checkpoint, or the direct regressor's."""
    kind = "direct" if experiment in DIRECT_EXPERIMENTS else "stage2"
    return f"{OUT}/models/{experiment}/{kind}.pt"


def get_experiment_json(name, stage):
    """The part of an experiment a stage uses (Stage I ignores E_prior's keys and the stage2 section)."""
    section = EXPERIMENTS[name]
    if name in DIRECT_EXPERIMENTS:
        return json.dumps(section, sort_keys=True)
    model = dict(section.get("model") or {})
    if stage == "stage1":
        model = {k: v for k, v in model.items() if k not in PRIOR_KEYS}
    return json.dumps({"protocol": section.get("protocol", "paper"), "model": model,
                       stage: section.get(stage) or {}}, sort_keys=True)


ONE_GPU = min(1, config["training"]["gpus"])  # evaluation, imputation and segmentation jobs: one GPU when training uses GPUs


def launch_args():
    """accelerate launch options, config/accelerate/ (single or multi): one process per GPU (training.gpus,
    the training rules' gpu resource); on the CPU, training.cpu_processes."""
    gpus = config["training"]["gpus"]
    processes = gpus or config["training"]["cpu_processes"]
    setup = "multi" if processes > 1 else "single"
    return (f"--config_file {ACCELERATE_CONFIGS}/{setup}.yaml --num_processes {processes}"
            + (" --cpu" if gpus == 0 and processes == 1 else ""))


def start_invocation(log):
    """onstart (only when there are jobs to run): refuse a GPU count this machine lacks or an MLflow server
    that does not answer, before any job; then open the parent MLflow run that the job runs nest under."""
    from codebrain.gpus import machine_gpus
    from codebrain.tracking import git_commit, open_invocation
    from codebrain.training.config import config_hash

    gpus = config["training"]["gpus"]
    if workflow.local_exec and gpus > (available := len(machine_gpus())):
        raise WorkflowError(f"config training.gpus: {gpus} GPUs per job, but this machine has {available}")
    tags = {"rule": "workflow", "config_hash": config_hash(config), "git_commit": git_commit(),
            "targets": " ".join(map(str, workflow.dag.targetfiles)) or "all",
            "jobs": sum(1 for _ in workflow.dag.needrun_jobs())}
    try:
        open_invocation(TRACKING_URI, DATASET["name"], tags, config)
    except ConnectionError as err:
        raise WorkflowError(f"config tracking.uri: {err}") from None


def end_invocation(status):
    from codebrain.tracking import close_invocation

    close_invocation(TRACKING_URI, status)


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
