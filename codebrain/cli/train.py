"""Training steps, in DAG order: train-stage1 -> cache-codes -> train-stage2; train-direct (the baseline);
with-gpus (how the rules claim devices), model-size (parameters and MACs of a config) and training-flops (the
compute of a config's experiments)."""

from __future__ import annotations

import argparse
from pathlib import Path

from codebrain.cli.common import add_run_arguments, config_section, step_run, store_uri
from codebrain.io import InputError


def experiment_from(args, kind):
    """The --config section parsed as `kind` (Experiment or DirectExperiment), or a refusal naming each bad key."""
    from pydantic import ValidationError

    from codebrain.training.config import AnyExperiment, parse_experiment
    from codebrain.validation import error_lines

    try:
        experiment = parse_experiment(config_section(args), args.contrasts)
    except ValidationError as err:
        raise InputError(error_lines(err, AnyExperiment, ("--config",))) from None
    if not isinstance(experiment, kind):
        raise InputError("--config: train-direct needs an experiment with method: direct"
                         if args.command == "train-direct" else "--config: a method: direct experiment trains with train-direct")
    return experiment


def run_spec(args, rule: str):
    """Where a training run reads and writes and how it is tracked (the loop opens its own MLflow run)."""
    from codebrain.provenance import config_hash, git_commit
    from codebrain.training.loop import RunSpec

    tags = {"rule": rule, "dataset": args.dataset, "experiment": args.experiment,
            "config_hash": config_hash(config_section(args)), "git_commit": git_commit()}
    return RunSpec(store=Path(args.store), out=Path(args.out), run_record=Path(args.run_record) if args.run_record else None,
                   tracking_uri=store_uri(args), experiment_name=args.dataset,
                   run_name=f"{rule}/{args.experiment}", tags=tags)


def cmd_train_stage1(args):
    from codebrain.training.config import Experiment
    from codebrain.training.stage1 import train

    train(experiment_from(args, Experiment), run_spec(args, "train_stage1"))


def cmd_cache_codes(args):
    from codebrain.training.cache_codes import cache_codes, plot_level_histograms

    out_dir = Path(args.out_dir)
    with step_run(args, "cache_codes", f"cache_codes/{args.experiment}", record=args.run_record,
                  experiment=args.experiment) as tracker:
        report = cache_codes(Path(args.stage1), Path(args.store), out_dir, args.contrasts, tuple(args.splits),
                             args.batch_size)
        plot_level_histograms(report, out_dir / "code_levels.png")
        for split, usage in report["splits"].items():
            tracker.log_metrics({f"{split}/{k}": v for k, v in usage.items() if isinstance(v, (int, float))})
        tracker.log_artifact(out_dir / "codes.json")
        if (out_dir / "code_levels.png").exists():
            tracker.log_artifact(out_dir / "code_levels.png")
    train = report["splits"]["train"]
    if "codes_used" in train:
        print(f"train codes used: {train['codes_used']} of {train['codebook_size']}, perplexity {train['perplexity']:.1f}")


def cmd_sync_tracking(args):
    from codebrain.tracking.offline import pending_dir, sync_pending

    folder = Path(args.pending) if args.pending else pending_dir(args.tracking_uri or "")
    if not folder.is_dir():
        raise InputError(f"--pending {folder}: no such folder (nothing was left for sync-tracking there)")
    synced = sync_pending(folder, args.tracking_uri)
    print(f"{len(synced)} pending run(s) logged from {folder}" + (f": {', '.join(synced)}" if synced else ""))


def cmd_train_stage2(args):
    from codebrain.training.config import Experiment
    from codebrain.training.stage2 import train

    train(experiment_from(args, Experiment), run_spec(args, "train_stage2"), Path(args.stage1), Path(args.codes))


def cmd_train_direct(args):
    from codebrain.training.config import DirectExperiment
    from codebrain.training.direct import train

    train(experiment_from(args, DirectExperiment), run_spec(args, "train_direct"))


def cmd_with_gpus(args):
    from codebrain.gpus import run_with_gpus

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise InputError("with-gpus: no command given (codebrain with-gpus --count N -- COMMAND ...)")
    devices = args.devices.split(",") if args.devices else None
    return run_with_gpus(args.count, command, devices, Path(args.lock_dir) if args.lock_dir else None)


def cmd_model_size(args):
    from codebrain.models.complexity import complexity, format_table
    from codebrain.training.config import Experiment

    experiment = experiment_from(args, Experiment)
    print(format_table(complexity(experiment.model, args.size), args.size))


def cmd_training_flops(args):
    import yaml

    from codebrain.training.budget import config_flops

    try:
        config = yaml.safe_load(Path(args.configfile).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{args.configfile}: not a readable YAML config ({err})") from None
    print(f"{'experiment':<16} {'stage':<8} {'PFLOPs':>10}")
    for name, stages in config_flops(config).items():
        for stage, flops in stages.items():
            print(f"{name:<16} {stage:<8} {flops / 1e15:>10.4g}")
        if len(stages) > 1:
            print(f"{name:<16} {'total':<8} {sum(stages.values()) / 1e15:>10.4g}")


def add_parsers(sub) -> None:
    p = sub.add_parser("train-stage1", help="Stage I: codes + common features + decoder (run under accelerate launch)")
    add_run_arguments(p)
    p.set_defaults(func=cmd_train_stage1)

    p = sub.add_parser("cache-codes", help="Stage I codes of every slice and contrast, for Stage II")
    add_run_arguments(p, training=False)
    p.add_argument("--stage1", required=True, help="Stage I checkpoint")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_cache_codes)

    p = sub.add_parser("train-stage2", help="Stage II: code prediction from the available contrasts")
    add_run_arguments(p)
    p.add_argument("--stage1", required=True, help="Stage I checkpoint")
    p.add_argument("--codes", required=True, help="code cache folder (cache-codes)")
    p.set_defaults(func=cmd_train_stage2)

    p = sub.add_parser("train-direct", help="the direct-regressor baseline (run under accelerate launch)")
    add_run_arguments(p)
    p.set_defaults(func=cmd_train_direct)

    p = sub.add_parser("with-gpus", help="run a command on N GPUs no other job on this machine holds "
                                         "(CUDA_VISIBLE_DEVICES); how training rules share a GPU machine")
    p.add_argument("--count", type=int, required=True, help="GPUs to claim (0: run on the CPU)")
    p.add_argument("--devices", help="device indices to choose from (default: CUDA_VISIBLE_DEVICES or nvidia-smi)")
    p.add_argument("--lock-dir", help="where the per-device lock files live (default: a folder in the temp dir)")
    p.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p.set_defaults(func=cmd_with_gpus)

    p = sub.add_parser("sync-tracking", help="log the MLflow runs a failing store could not take (pending files)")
    p.add_argument("--pending", help="folder of pending runs (default: results/mlflow-pending, or beside the "
                                     "SQLite store that --tracking-uri names)")
    p.add_argument("--tracking-uri", help="log into this store instead of each run's own")
    p.set_defaults(func=cmd_sync_tracking)

    p = sub.add_parser("model-size", help="parameters and MACs of each network for a config")
    p.add_argument("--contrasts", nargs="+", default=["T1", "T2", "PD"])
    p.add_argument("--config", default="{}", help="experiment section: JSON, or a YAML/JSON file (e.g. config/models/paper.yaml)")
    p.add_argument("--size", type=int, default=256)
    p.set_defaults(func=cmd_model_size)

    p = sub.add_parser("training-flops", help="training FLOPs of each experiment of a workflow config, before training")
    p.add_argument("configfile", help="a workflow config (e.g. config/config.yaml)")
    p.set_defaults(func=cmd_training_flops)
