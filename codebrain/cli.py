"""`codebrain` command line: one subcommand per pipeline step (the Snakemake rules call these)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

from codebrain.data.layouts import MATCHERS
from codebrain.io import InputError, default_device


def named_files(pairs: list[str]) -> dict[str, Path]:
    """["T1=a.nii.gz", ...] -> {"T1": Path("a.nii.gz"), ...}"""
    files = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise InputError(f"expected NAME=PATH, got {pair!r}")
        files[name] = Path(path)
    return files


def step_tracker(args, rule: str, run_name: str, params: dict | None = None, **tags):
    """The MLflow run of one step that is not a training loop (those open theirs through run_spec), nested
    under the invocation's run; params default to the command's arguments. Disabled when the command gets
    no --dataset (the data commands run by hand)."""
    from codebrain.tracking import Tracker, git_commit, tracking_uri
    from codebrain.training.config import config_hash

    if not args.dataset:
        return Tracker(False)
    if params is None:
        params = {k: v for k, v in vars(args).items() if k not in ("func", "command", "tracking_uri", "results", "dataset")}
    return Tracker(True, tracking_uri(args.tracking_uri, args.results), args.dataset, run_name,
                   {"rule": rule, "dataset": args.dataset, **tags, "config_hash": config_hash(params),
                    "git_commit": git_commit()}, params)


def cmd_phantom(args):
    from codebrain.data.phantom import PhantomConfig, make_subject

    cfg = PhantomConfig(flavour=args.flavour, n_subjects=args.n_subjects, downsample=args.downsample, seed=args.seed)
    indices = args.index if args.index else range(1, cfg.n_subjects + 1)
    for index in indices:
        tracker = step_tracker(args, "make_phantom_subject", f"make_phantom_subject/{index}", subject=index)
        written = make_subject(index, cfg, Path(args.root))
        tracker.log_dict({name: str(path) for name, path in written.items()}, "files.json")
        tracker.finish(None)


def cmd_check_raw(args):
    from codebrain.data.layouts import discover
    from codebrain.data.manifest import build_manifest

    tracker = step_tracker(args, "check_raw", "check_raw")
    subjects = discover(args.root, args.layout, args.contrasts, args.on_missing, args.labels)
    manifest = build_manifest(subjects, Path(args.out))
    tracker.log_metrics({"subjects": manifest.subject.nunique(), "files": len(manifest)})
    tracker.log_artifact(args.out)
    tracker.finish(None)
    print(f"{args.out}: {manifest.subject.nunique()} subjects, {len(manifest)} files")


def cmd_register(args):
    from codebrain.data.registration import register_subject

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    subject = Path(args.out_dir).name
    tracker = step_tracker(args, "register_subject", f"register_subject/{subject}", subject=subject)
    qc = register_subject(named_files(args.input), args.reference, Path(args.out_dir), args.method, args.seed)
    tracker.log_metrics({f"{contrast}/{key}": value for contrast, result in qc["contrasts"].items()
                         for key, value in result.items() if key.startswith("mi_")})
    tracker.log_artifact(Path(args.out_dir) / "qc.json")
    tracker.finish(None)
    print(json.dumps(qc))


def cmd_extract_slices(args):
    from codebrain.data.slices import extract_subject, slice_config

    cfg = slice_config(json.loads(args.config))
    files = named_files(args.input)
    labels = files.pop("seg", None)
    z_range = tuple(args.z_range) if args.z_range else None
    tracker = step_tracker(args, "extract_slices", f"extract_slices/{args.subject}", subject=args.subject)
    extract_subject(args.subject, files, args.contrasts, cfg, Path(args.out), z_range, labels,
                    require_same_grid=True)
    tracker.finish(None)


def cmd_build_store(args):
    from codebrain.data.slices import assign_splits, build_store, slice_config

    subject_files = {Path(f).name.removesuffix(".npz"): Path(f) for f in args.subject_slices}
    split_table = pd.read_csv(args.split_table, sep="\t") if args.split_table else None
    fractions = dict(zip(("train", "val", "test"), args.fractions))
    assignment = assign_splits(sorted(subject_files), fractions, args.seed, split_table)
    tracker = step_tracker(args, "build_slice_store", "build_slice_store")
    summary = build_store(subject_files, assignment, args.contrasts, Path(args.out_dir),
                          slice_config(json.loads(args.config)))
    tracker.log_artifact(Path(args.out_dir) / "store.json")
    tracker.finish(None)
    print(json.dumps(summary))


def cmd_download(args):
    from codebrain.data.download import download, extract

    for spec in args.url:
        url, _, sha256 = spec.partition("#sha256=")
        archive = download(url, Path(args.dest) / url.rsplit("/", 1)[-1], sha256 or None)
        if args.root and ".tar" in archive.name:
            extract(archive, args.root)


def cmd_unpack(args):
    from codebrain.data.download import extract

    for archive in args.archive:
        print(extract(archive, args.root))


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


def experiment_from(args):
    from codebrain.training.config import parse_experiment

    try:
        return parse_experiment(config_section(args), args.contrasts)
    except (TypeError, ValueError) as err:
        raise InputError(f"--config: {err}") from err


def codebrain_experiment(args):
    from codebrain.training.config import Experiment

    experiment = experiment_from(args)
    if not isinstance(experiment, Experiment):
        raise InputError("--config: a method: direct experiment trains with train-direct")
    return experiment


def run_spec(args, rule: str):
    from codebrain.tracking import git_commit, tracking_uri
    from codebrain.training.config import config_hash
    from codebrain.training.loop import RunSpec

    tags = {"rule": rule, "dataset": args.dataset, "experiment": args.experiment,
            "config_hash": config_hash(config_section(args)),
            "git_commit": git_commit()}
    return RunSpec(store=Path(args.store), out=Path(args.out), run_record=Path(args.run_record) if args.run_record else None,
                   tracking_uri=tracking_uri(args.tracking_uri, args.results), experiment_name=args.dataset,
                   run_name=f"{rule}/{args.experiment}", tags=tags)


def cmd_train_stage1(args):
    from codebrain.training.stage1 import train

    train(codebrain_experiment(args), run_spec(args, "train_stage1"))


def cmd_train_stage2(args):
    from codebrain.training.stage2 import train

    train(codebrain_experiment(args), run_spec(args, "train_stage2"), Path(args.stage1), Path(args.codes))


def cmd_train_direct(args):
    from codebrain.training.config import DirectExperiment
    from codebrain.training.direct import train

    experiment = experiment_from(args)
    if not isinstance(experiment, DirectExperiment):
        raise InputError("--config: train-direct needs an experiment with method: direct")
    train(experiment, run_spec(args, "train_direct"))


def cmd_cache_codes(args):
    from codebrain.training.cache_codes import cache_codes, plot_level_histograms

    out_dir = Path(args.out_dir)
    report = cache_codes(Path(args.stage1), Path(args.store), out_dir, tuple(args.splits), args.batch_size)
    plot_level_histograms(report, out_dir / "code_levels.png")
    tracker = step_tracker(args, "cache_codes", f"cache_codes/{args.experiment}", experiment=args.experiment)
    for split, usage in report["splits"].items():
        tracker.log_metrics({f"{split}/{k}": v for k, v in usage.items() if isinstance(v, (int, float))})
    tracker.log_artifact(out_dir / "codes.json")
    if (out_dir / "code_levels.png").exists():
        tracker.log_artifact(out_dir / "code_levels.png")
    tracker.finish(args.run_record)
    train = report["splits"]["train"]
    if "codes_used" in train:
        print(f"train codes used: {train['codes_used']} of {train['codebook_size']}, perplexity {train['perplexity']:.1f}")


def cmd_evaluate(args):
    from codebrain.evaluation.evaluate import evaluate

    out_dir = Path(args.out_dir)
    means = evaluate(Path(args.model), Path(args.store), out_dir, args.split, args.batch_size)
    tracker = step_tracker(args, "evaluate_model", f"evaluate_model/{args.experiment}", experiment=args.experiment,
                           split=args.split)
    for _, row in means.iterrows():
        group = {"O->O": "one_to_one", "M->O": "many_to_one"}.get(row.group, row.group.lower())
        prefix = f"{args.split}/{group}/{row.method}".replace(" ", "_").replace("(", "").replace(")", "")
        tracker.log_metrics({f"{prefix}/{k}": row[k] for k in ("psnr", "ssim", "mae", "psnr_brain")})
    for name in ("scenarios.csv", "summary.csv", "tables.md", "exemplars.png", "code_maps.png"):
        if (out_dir / name).exists():
            tracker.log_artifact(out_dir / name)
    tracker.finish(args.run_record)
    print(means[means.group == "ALL"].to_string(index=False))


def cmd_impute_split(args):
    from codebrain.checkpoints import load_codebrain
    from codebrain.evaluation.impute import impute_subjects

    stage1, prior, _ = load_codebrain(Path(args.model), args.contrasts)
    device = default_device()
    references = {subject: Path(path) for subject, path in json.loads(args.references).items()}
    table = impute_subjects(stage1.to(device), prior.to(device), Path(args.store), references, Path(args.out_dir),
                            args.split)
    tracker = step_tracker(args, "impute_test_subjects", f"impute_test_subjects/{args.experiment}",
                           experiment=args.experiment, split=args.split, **{"volumes.path": Path(args.out_dir).resolve()})
    tracker.log_metrics({"volumes": len(table), "subjects": table.subject.nunique()})
    tracker.log_artifact(Path(args.out_dir) / "imputed.tsv")  # the volumes themselves stay on disk (large)
    tracker.finish(None)
    print(f"{len(table)} volumes for {table.subject.nunique()} subjects in {args.out_dir}")


def cmd_impute(args):
    import tempfile

    from codebrain.checkpoints import load_codebrain
    from codebrain.evaluation.impute import impute_scans

    stage1, prior, data = load_codebrain(args.model)
    if "size" not in data:
        raise InputError(f"{args.model}: trained before checkpoints recorded their slice store; retrain Stage I")
    device = default_device()
    with tempfile.TemporaryDirectory(prefix="codebrain-register-") as work_dir:
        report = impute_scans(stage1.to(device), prior.to(device), data,
                              named_files(args.input), args.target, Path(args.out), args.register, args.outside,
                              Path(work_dir))
    first, last = report["trained_range"]
    print(f"{args.out}: {args.target} imputed on {report['slices']} slices (normalised units, 0-1)")
    if report["outside"] == "impute":
        print(f"note: {report['outside_trained_range']} of these brain slices lie outside the {last - first + 1} "
              f"middle slices the model was trained on ({first}-{last}); their imputation is less certain")
    else:
        print(f"note: only slices {first}-{last} (the trained range) were imputed; "
              f"{report['outside_trained_range']} other brain slices are left at 0")


def cmd_compare(args):
    from codebrain.io import write_atomic
    from codebrain.evaluation.evaluate import compare_experiments

    tracker = step_tracker(args, "compare_experiments", "compare_experiments")
    table, markdown = compare_experiments({name: Path(path) for name, path in named_files(args.summary).items()})
    with write_atomic(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with write_atomic(args.markdown) as tmp:
        tmp.write_text(markdown)
    tracker.log_artifact(args.out)
    tracker.log_artifact(args.markdown)
    tracker.finish(None)
    print(markdown)


def cmd_train_segmenter(args):
    from codebrain.evaluation.segmentation import train_segmenter
    from codebrain.models.segmenter import SegmenterConfig
    from codebrain.training.config import dataclass_from

    try:
        cfg = dataclass_from(SegmenterConfig, config_section(args), "segmentation")
    except (TypeError, ValueError) as err:
        raise InputError(f"--config: {err}") from err
    tracker = step_tracker(args, "train_segmenter", "train_segmenter",
                           params={f"segmentation.{k}": v for k, v in vars(cfg).items()})
    try:
        metrics = train_segmenter(Path(args.store), cfg, Path(args.out), tracker)
    except BaseException:
        tracker.finish(None, status="FAILED")
        raise
    tracker.log_metrics(metrics)
    tracker.finish(args.run_record)
    print(f"segmenter: validation whole-tumour Dice (2D) {metrics['val/dice_wt_2d']:.3f}")


def cmd_evaluate_segmentation(args):
    from codebrain.io import write_atomic
    from codebrain.evaluation.evaluate import load_imputer
    from codebrain.checkpoints import load_segmenter
    from codebrain.evaluation.segmentation import evaluate_segmentation, markdown_table

    device = default_device()
    segmenter = load_segmenter(Path(args.segmenter), args.contrasts).to(device)
    imputers = {name: load_imputer(path, args.contrasts, device) for name, path in named_files(args.model).items()}
    table = evaluate_segmentation(segmenter, imputers, Path(args.store), args.split)
    out_dir = Path(args.out_dir)
    with write_atomic(out_dir / "dice.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with write_atomic(out_dir / "dice.md") as tmp:
        tmp.write_text(markdown_table(table))
    tracker = step_tracker(args, "evaluate_segmentation", "evaluate_segmentation", split=args.split)
    means = table.groupby("method", sort=False)[["dice_2d", "dice_3d", "dice_3d_vs_full"]].mean()
    for method, row in means.iterrows():
        tracker.log_metrics({f"{args.split}/{method.replace(' ', '_')}/{k}": v for k, v in row.items()})
    tracker.log_artifact(out_dir / "dice.csv")
    tracker.log_artifact(out_dir / "dice.md")
    tracker.finish(args.run_record)
    print(markdown_table(table))


def cmd_with_gpus(args):
    from codebrain.gpus import run_with_gpus

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise InputError("with-gpus: no command given (codebrain with-gpus --count N -- COMMAND ...)")
    devices = args.devices.split(",") if args.devices else None
    return run_with_gpus(args.count, command, devices, Path(args.lock_dir) if args.lock_dir else None)


def cmd_model_size(args):
    from codebrain.models.complexity import complexity, format_table

    experiment = codebrain_experiment(args)
    print(format_table(complexity(experiment.model, args.size), args.size))


def add_tracking_arguments(p, dataset: str = ""):
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or SQLite in --results)")
    p.add_argument("--results", default="results")
    p.add_argument("--dataset", default=dataset, help="MLflow experiment name" + ("" if dataset else " (none: no MLflow run)"))


def add_run_arguments(p, training: bool = True):
    p.add_argument("--store", required=True, help="slice store folder (store.json)")
    p.add_argument("--out", required=training, help="final checkpoint (written only when training completes)")
    p.add_argument("--contrasts", nargs="+", required=True)
    p.add_argument("--config", default="{}", help="experiment section {protocol, model, stage1, stage2}: JSON, or a YAML/JSON file")
    p.add_argument("--run-record", help="JSON with the MLflow run id, written at the end")
    add_tracking_arguments(p, dataset="codebrain")
    p.add_argument("--experiment", default="default", help="name of this model variant")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="codebrain", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write a synthetic cohort in IXI or BraTS 2023 layout")
    p.add_argument("--root", required=True)
    p.add_argument("--flavour", choices=["ixi", "brats"], default="ixi")
    p.add_argument("--n-subjects", type=int, default=8)
    p.add_argument("--index", type=int, action="append", help="only subject number INDEX (repeatable)")
    p.add_argument("--downsample", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("check-raw", help="check every raw volume and write manifest.tsv")
    p.add_argument("--root", required=True)
    p.add_argument("--layout", choices=sorted(MATCHERS), required=True)
    p.add_argument("--contrasts", nargs="+", required=True)
    p.add_argument("--on-missing", choices=["drop", "fail"], default="drop")
    p.add_argument("--labels", action="store_true", help="require a seg label volume per subject")
    p.add_argument("--out", required=True)
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_check_raw)

    p = sub.add_parser("register", help="ANTs registration of one subject's contrasts to the reference")
    p.add_argument("--input", action="append", required=True, metavar="CONTRAST=PATH")
    p.add_argument("--reference", required=True)
    p.add_argument("--method", choices=["rigid", "affine"], default="rigid")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("extract-slices", help="normalised axial slices of one subject")
    p.add_argument("--subject", required=True)
    p.add_argument("--input", action="append", required=True, metavar="CONTRAST=PATH")
    p.add_argument("--contrasts", nargs="+", required=True)
    p.add_argument("--config", default="{}", help="the config's slices section as JSON")
    p.add_argument("--z-range", type=int, nargs=2, metavar=("FIRST", "LAST"))
    p.add_argument("--out", required=True)
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_extract_slices)

    p = sub.add_parser("build-store", help="one memory-mapped slice array per split")
    p.add_argument("--subject-slices", nargs="+", required=True)
    p.add_argument("--contrasts", nargs="+", required=True)
    p.add_argument("--split-table", help="TSV with subject and split columns (the authors' splits)")
    p.add_argument("--config", default="{}", help="the config's slices section as JSON (recorded in store.json)")
    p.add_argument("--fractions", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", required=True)
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_build_store)

    p = sub.add_parser("download", help="resumable, checksum-verified download (and unpacking) of archives")
    p.add_argument("--url", action="append", required=True, metavar="URL[#sha256=HEX]")
    p.add_argument("--dest", required=True, help="folder for the archives")
    p.add_argument("--root", help="unpack tarballs into this raw-data folder")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("unpack", help="unpack official tarballs (IXI-T1.tar ...) into the raw folder")
    p.add_argument("archive", nargs="+")
    p.add_argument("--root", required=True)
    p.set_defaults(func=cmd_unpack)

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

    p = sub.add_parser("with-gpus", help="run a command on N GPUs no other job on this machine holds "
                                         "(CUDA_VISIBLE_DEVICES); how training rules share a GPU machine")
    p.add_argument("--count", type=int, required=True, help="GPUs to claim (0: run on the CPU)")
    p.add_argument("--devices", help="device indices to choose from (default: CUDA_VISIBLE_DEVICES or nvidia-smi)")
    p.add_argument("--lock-dir", help="where the per-device lock files live (default: a folder in the temp dir)")
    p.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p.set_defaults(func=cmd_with_gpus)

    p = sub.add_parser("train-segmenter", help="2D tumour U-Net (MONAI) on the real full-contrast training slices")
    add_run_arguments(p)
    p.set_defaults(func=cmd_train_segmenter)

    p = sub.add_parser("evaluate-segmentation", help="whole-tumour Dice with each missing contrast zero-filled, "
                                                     "imputed by each model, or real (the paper's Table 4)")
    add_run_arguments(p, training=False)
    p.add_argument("--segmenter", required=True, help="train-segmenter checkpoint")
    p.add_argument("--model", action="append", default=[], help="NAME=CHECKPOINT (Stage II or direct; repeatable)")
    p.add_argument("--split", default="test")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_evaluate_segmentation)

    p = sub.add_parser("train-direct", help="the direct-regressor baseline (run under accelerate launch)")
    add_run_arguments(p)
    p.set_defaults(func=cmd_train_direct)

    p = sub.add_parser("evaluate", help="every scenario on a split: metrics/scenarios.csv, summary.csv, tables, figures")
    add_run_arguments(p, training=False)
    p.add_argument("--model", required=True, help="Stage II or direct-regressor checkpoint")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("impute-split", help="every scenario for every subject of a split, as NIfTI volumes")
    add_run_arguments(p, training=False)
    p.add_argument("--model", required=True, help="Stage II checkpoint")
    p.add_argument("--references", required=True, help='JSON {subject: reference volume} (the grid to write on)')
    p.add_argument("--split", default="test")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_impute_split)

    p = sub.add_parser("impute", help="impute a missing contrast for your own subject")
    p.add_argument("--model", required=True, help="Stage II checkpoint (results/<name>/models/<experiment>/stage2.pt)")
    p.add_argument("--input", action="append", required=True, metavar="CONTRAST=PATH")
    p.add_argument("--target", required=True, help="the contrast to impute")
    p.add_argument("--out", required=True, help="output NIfTI, on the first input's grid")
    p.add_argument("--register", action="store_true", help="rigidly register the inputs to the first one (ANTs)")
    p.add_argument("--outside", choices=["impute", "skip"], default="impute",
                   help="brain slices outside the trained middle range: impute them too, or leave them at 0")
    p.set_defaults(func=cmd_impute)

    p = sub.add_parser("compare", help="the experiments' summaries side by side (metrics/summary.csv)")
    p.add_argument("--summary", action="append", required=True, metavar="EXPERIMENT=SUMMARY_CSV")
    p.add_argument("--out", required=True)
    p.add_argument("--markdown", required=True)
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("model-size", help="parameters and MACs of each network for a config")
    p.add_argument("--contrasts", nargs="+", default=["T1", "T2", "PD"])
    p.add_argument("--config", default="{}", help="experiment section: JSON, or a YAML/JSON file (e.g. config/models/paper.yaml)")
    p.add_argument("--size", type=int, default=256)
    p.set_defaults(func=cmd_model_size)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except InputError as err:
        print(f"codebrain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from codebrain.training.loop import TrainingDiverged

        if not isinstance(err, TrainingDiverged):
            raise
        print(f"codebrain {args.command}: error: {err}", file=sys.stderr)
        return 3
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
