"""What the subcommands share: argument groups, NAME=PATH pairs, config sections and the step's MLflow run."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from codebrain.io import InputError


def named_files(pairs: list[str]) -> dict[str, Path]:
    """["T1=a.nii.gz", ...] -> {"T1": Path("a.nii.gz"), ...}"""
    files = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise InputError(f"expected NAME=PATH, got {pair!r}")
        if name in files:
            raise InputError(f"{name} given twice ({name}={files[name]} and {pair}); give each once")
        files[name] = Path(path)
    return files


def config_section(args) -> dict:
    """--config: inline JSON, or a YAML/JSON file."""
    import yaml

    if not args.config.lstrip().startswith("{"):
        if not Path(args.config).is_file():
            raise InputError(f"--config: {args.config}: no such file")
        return yaml.safe_load(Path(args.config).read_text()) or {}
    try:
        return json.loads(args.config)
    except json.JSONDecodeError as err:
        raise InputError(f"--config: neither a file nor JSON ({err})") from err


def store_uri(args) -> str:
    """The MLflow store this command logs to; said on stderr when neither --tracking-uri nor
    MLFLOW_TRACKING_URI chose it (a command run by hand), so no store appears unannounced."""
    import os
    import sys

    from codebrain.tracking.runs import tracking_uri

    uri = tracking_uri(args.tracking_uri, args.results)
    if not args.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        print(f"codebrain {args.command}: MLflow runs go to {uri} (--tracking-uri or MLFLOW_TRACKING_URI to change)",
              file=sys.stderr)
    return uri


@contextmanager
def step_run(args, rule: str, run_name: str, params: dict | None = None, record: str | None = None, **tags):
    """The MLflow run of one step, nested under the invocation's run: FINISHED with its run record when the
    block ends, FAILED if it raises. params default to the command's arguments. Disabled when the command
    gets no --dataset (data commands run by hand)."""
    from codebrain.provenance import config_hash, git_commit
    from codebrain.tracking.tracker import Tracker

    if not args.dataset:
        tracker = Tracker(False)
    else:
        if params is None:
            params = {k: v for k, v in vars(args).items()
                      if k not in ("func", "command", "tracking_uri", "results", "dataset")}
        tracker = Tracker(True, store_uri(args), args.dataset, run_name,
                          {"rule": rule, "dataset": args.dataset, **tags, "config_hash": config_hash(params),
                           "git_commit": git_commit()}, params)
    try:
        yield tracker
    except BaseException:
        tracker.finish(None, status="FAILED")
        raise
    tracker.finish(record)


def add_tracking_arguments(p, dataset: str = ""):
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or SQLite in --results)")
    p.add_argument("--results", default="results")
    p.add_argument("--dataset", default=dataset, help="MLflow experiment name" + ("" if dataset else " (none: no MLflow run)"))


def add_run_arguments(p, training: bool = True):
    """--store, --contrasts and the tracking arguments; training steps also take --out and --config."""
    p.add_argument("--store", required=True, help="slice store folder (store.json)")
    p.add_argument("--contrasts", nargs="+", required=True)
    if training:
        p.add_argument("--out", required=True, help="final checkpoint (written only when training completes)")
        p.add_argument("--config", default="{}", help="experiment section {protocol, model, stage1, stage2}: JSON, "
                                                      "or a YAML/JSON file")
    p.add_argument("--run-record", help="JSON with the MLflow run id, written at the end")
    add_tracking_arguments(p, dataset="codebrain")
    p.add_argument("--experiment", default="default", help="name of this model variant")
