"""What the Snakefile does at start-up, kept here so that workflow/rules/ holds only rules, constants and get_*
helpers: the config's validation (codebrain/config.py), the raw subjects, each experiment's section per training
step, accelerate's launch options and the invocation's MLflow run."""

from __future__ import annotations

import json

from snakemake.exceptions import WorkflowError

from codebrain.provenance import config_hash
from codebrain.training.config import stage_section


def validate_config(config: dict) -> None:
    """The config checked against codebrain.config.PipelineConfig and its defaults filled in place (Snakemake's
    `config` object), or a WorkflowError listing every bad key and value with its path."""
    from codebrain.config import validated

    try:
        filled = validated(config)
    except ValueError as err:
        raise WorkflowError(f"config: {len(str(err).splitlines())} bad keys or values\n{err}") from None
    config.clear()
    config.update(filled)


def invocation_gpus(resources) -> int | None:
    """This invocation's `--resources gpu=N` (Snakemake's global resources), or None when it gives no count."""
    value = resources.get("gpu")
    value = getattr(value, "value", value)  # Snakemake 9 wraps each value
    return None if value is None else int(value)


def resolve_gpus(config: dict, allowed: int | None) -> None:
    """training.gpus: "all" becomes a count in place: the invocation's `--resources gpu=N` (`allowed`), else every
    GPU this machine shows, and at least one (a cluster's login node shows none; a local run on a machine without
    GPUs is refused at start-up, as a count would be)."""
    from codebrain.gpus import machine_gpus

    if config["training"]["gpus"] == "all":
        config["training"]["gpus"] = allowed if allowed is not None else max(1, len(machine_gpus()))


def experiment_json(section: dict, stage: str) -> str:
    """The experiment's section as a training step sees it (a rule parameter: a change reruns that step)."""
    return json.dumps(stage_section(section, stage), sort_keys=True)


def start_invocation(config: dict, uri: str, local: bool, targets: list[str], jobs: int) -> None:
    """onstart: refuse a GPU count this machine lacks or an MLflow server that does not answer, before any
    job; then open the parent MLflow run that the job runs nest under."""
    from codebrain.gpus import machine_gpus
    from codebrain.io import store_errors
    from codebrain.provenance import git_commit
    from codebrain.tracking.lock import StoreLockTimeout
    from codebrain.tracking.offline import error_line
    from codebrain.tracking.runs import open_invocation

    gpus = config["training"]["gpus"]
    if local and gpus > (available := len(machine_gpus())):
        raise WorkflowError(f"config training.gpus: {gpus} GPUs per job, but this machine has {available}")
    tags = {"rule": "workflow", "config_hash": config_hash(config), "git_commit": git_commit(),
            "targets": " ".join(targets) or "all", "jobs": jobs}
    try:
        open_invocation(uri, config["dataset"]["name"], tags, config)
    except (ConnectionError, StoreLockTimeout) as err:
        raise WorkflowError(f"config tracking.uri: {err}") from None
    except store_errors() as err:  # anything else is a bug, raised with its traceback
        raise WorkflowError(f"config tracking.uri: {uri}: the MLflow store cannot be written "
                            f"({error_line(err)})") from None


def raw_subjects(config: dict) -> dict[str, dict[str, str]]:
    """{subject: {kind: path}} of the configured raw data: the phantom's paths (config has a phantom section),
    the subjects discovered under dataset.root with the layout's naming, or, for the Decathlon's 4D volumes, the
    3D files `split_msd_subject` makes of them under results/<dataset>/raw/."""
    from codebrain.data import layouts

    dataset = config["dataset"]
    kinds = dataset["contrasts"] + (["seg"] if dataset["labels"] else [])
    if dataset["layout"] == "msd":
        split_root = f"{config['results']}/{dataset['name']}/raw"
        return {subject: {k: str(p) for k, p in layouts.msd_split_files(split_root, subject, kinds).items()}
                for subject in msd_sources(config)}
    if "phantom" in config:
        flavour = config["phantom"]["flavour"]
        return {subject: {k: str(p) for k, p in layouts.phantom_subject_files(flavour, dataset["root"], subject,
                                                                              kinds).items() if k in kinds}
                for subject in phantom_subjects(config)}
    found = layouts.discover(dataset["root"], dataset["layout"], dataset["contrasts"], dataset["on_missing_contrast"],
                             dataset["labels"])
    return {subject: {k: str(p) for k, p in files.items()} for subject, files in found.items()}


def msd_sources(config: dict) -> dict[str, dict[str, str]]:
    """{subject: {"channels": 4D volume, "seg": labels}} of a Decathlon Task01 folder."""
    from codebrain.data import layouts

    dataset = config["dataset"]
    found = layouts.discover(dataset["root"], "msd", dataset["contrasts"], dataset["on_missing_contrast"],
                             dataset["labels"])
    return {subject: {k: str(p) for k, p in files.items()} for subject, files in found.items()}


def found_raw_subjects(config: dict, can_download: bool) -> dict[str, dict[str, str]] | None:
    """`raw_subjects` of dataset.root, or None when it holds no complete subject of dataset.layout yet and there is
    something to download; with nothing to download, a one-line WorkflowError naming the root and what is missing."""
    from codebrain.io import InputError

    try:
        return raw_subjects(config)
    except InputError as err:
        if can_download:
            return None
        raise WorkflowError(f"config dataset.root: {err}") from None


def phantom_subjects(config: dict) -> dict[str, int]:
    """{subject id: phantom index} of the phantom cohort."""
    from codebrain.data.layouts import phantom_subject_id

    flavour = config["phantom"]["flavour"]
    return {phantom_subject_id(flavour, i): i for i in range(1, config["phantom"]["n_subjects"] + 1)}


ACCELERATE_CONFIGS = "CODEBRAIN_ACCELERATE_CONFIGS"  # environment variable: the folder of config/accelerate/


def launch_args(config: dict) -> str:
    """accelerate launch options from config/accelerate/ (single or multi): one process per GPU (training.gpus,
    the training rules' gpu resource); on the CPU, training.cpu_processes. The folder comes through the environment
    (set at start-up), so that the rule parameters hold no absolute path: a moved checkout reruns nothing."""
    gpus = config["training"]["gpus"]
    processes = gpus or config["training"]["cpu_processes"]
    setup = "multi" if processes > 1 else "single"
    return (f"--config_file ${ACCELERATE_CONFIGS}/{setup}.yaml --num_processes {processes}"
            + (" --cpu" if gpus == 0 and processes == 1 else ""))
