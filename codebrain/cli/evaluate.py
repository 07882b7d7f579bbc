"""Evaluation steps, in DAG order: evaluate -> compare; impute-split; train-segmenter -> evaluate-segmentation;
and impute, for a user's own scans."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from codebrain.cli.common import add_run_arguments, add_tracking_arguments, config_section, named_files, step_run
from codebrain.io import InputError, default_device, scratch_folder, write_atomic


def cmd_evaluate(args):
    from codebrain.evaluation.evaluate import evaluate, logged_metrics
    from codebrain.registry import scored_model_version

    out_dir = Path(args.out_dir)
    with step_run(args, "evaluate_model", f"evaluate_model/{args.experiment}", record=args.run_record,
                  experiment=args.experiment, split=args.split) as tracker:
        tracker.log_store_input(Path(args.store), [args.split], "evaluation")
        if tracker.enabled and tracker.offline is None:  # the registered version this run scores
            tracker.set_tags(scored_model_version(tracker.uri, Path(args.model), f"{args.dataset}-{args.experiment}"))
        means, codes = evaluate(Path(args.model), Path(args.store), out_dir, args.contrasts, args.split,
                                args.batch_size, args.uncertainty_samples)
        tracker.log_metrics(logged_metrics(means, args.split, codes))
        for name in ("scenarios.csv", "summary.csv", "tables.md", "exemplars.png", "code_maps.png", "uncertainty.csv",
                     "uncertainty.png"):
            if (out_dir / name).exists():
                tracker.log_artifact(out_dir / name)
    print(means[means.group == "ALL"].to_string(index=False))


def cmd_compare(args):
    from codebrain.evaluation.compare import compare_experiments

    benchmarks = {method: [Path(f) for f in str(files).split(",")]
                  for method, files in named_files(args.benchmarks or []).items()}
    with step_run(args, "compare_experiments", "compare_experiments") as tracker:
        markdown = compare_experiments({name: Path(path) for name, path in named_files(args.summary).items()},
                                       Path(args.out), Path(args.markdown), benchmarks or None)
        tracker.log_artifact(args.out)
        tracker.log_artifact(args.markdown)
    print(markdown)


def cmd_impute_split(args):
    import numpy as np

    from codebrain.evaluation.brasyn import VOLUME_METRICS
    from codebrain.evaluation.evaluate import GROUPS, group_means, load_imputer
    from codebrain.evaluation.impute import impute_subjects

    imputer, _ = load_imputer(Path(args.model), args.contrasts, default_device(), reconstruct=False)
    references = {subject: Path(path) for subject, path in json.loads(args.references).items()}
    truths = json.loads(args.truths) if args.truths else None
    with step_run(args, "impute_test_subjects", f"impute_test_subjects/{args.experiment}", experiment=args.experiment,
                  split=args.split, **{"volumes.path": Path(args.out_dir).resolve()}) as tracker:
        table = impute_subjects(imputer, Path(args.store), references, Path(args.out_dir), args.split,
                                uncertainty_samples=args.uncertainty_samples, truths=truths)
        tracker.log_metrics({"volumes": len(table), "subjects": table.subject.nunique()})
        tracker.log_artifact(Path(args.out_dir) / "imputed.tsv")  # the volumes themselves stay on disk (large)
        if truths:  # BraSyn's scores on the subjects' own grids: means over subjects, then over pairs
            pairs = table.groupby(["scenario", "target", "n_inputs"], as_index=False)[list(VOLUME_METRICS)].mean()
            means = group_means(pairs.assign(method="CodeBrain"))
            tracker.log_metrics({f"{args.split}/{GROUPS[g]}/grid/{k}": float(v) for g, row in means.set_index(
                "group").iterrows() for k, v in row[list(VOLUME_METRICS)].items() if np.isfinite(v)})
            with write_atomic(Path(args.out_dir) / "brasyn.tsv") as tmp:
                means[["group", "pairs", *VOLUME_METRICS]].to_csv(tmp, sep="\t", index=False, float_format="%.4f")
            tracker.log_artifact(Path(args.out_dir) / "brasyn.tsv")
            print(means[["group", "pairs", *VOLUME_METRICS]].to_string(index=False, float_format="%.2f"))
    print(f"{len(table)} volumes for {table.subject.nunique()} subjects in {args.out_dir}")


def cmd_train_segmenter(args):
    from codebrain.evaluation.segmentation import train_segmenter
    from pydantic import ValidationError

    from codebrain.models.segmenter import SegmenterConfig
    from codebrain.validation import error_lines

    try:
        cfg = SegmenterConfig.model_validate(config_section(args))
    except ValidationError as err:
        raise InputError(error_lines(err, SegmenterConfig, ("--config",))) from None
    params = {f"segmentation.{k}": v for k, v in cfg.model_dump().items() if k != "contrasts"}
    with step_run(args, "train_segmenter", "train_segmenter", params=params, record=args.run_record) as tracker:
        metrics = train_segmenter(Path(args.store), cfg, Path(args.out), tracker)
        tracker.log_metrics(metrics)
    print(f"segmenter: validation whole-tumour Dice (2D) {metrics['val/dice_wt_2d']:.3f}")


def cmd_evaluate_segmentation(args):
    from codebrain.rebuild import load_segmenter
    from codebrain.evaluation.evaluate import load_imputer
    from codebrain.evaluation.segmentation import evaluate_segmentation, logged_metrics, markdown_table, write_tables

    device = default_device()
    segmenter = load_segmenter(Path(args.segmenter), args.contrasts).to(device)
    imputers = {name: load_imputer(path, args.contrasts, device) for name, path in named_files(args.model).items()}
    out_dir = Path(args.out_dir)
    with step_run(args, "evaluate_segmentation", "evaluate_segmentation", record=args.run_record,
                  split=args.split) as tracker:
        table = evaluate_segmentation(segmenter, imputers, Path(args.store), args.split)
        write_tables(table, out_dir)
        tracker.log_metrics(logged_metrics(table, args.split))
        tracker.log_artifact(out_dir / "dice.csv")
        tracker.log_artifact(out_dir / "dice.md")
    print(markdown_table(table))


def cmd_impute(args):
    from codebrain.evaluation.impute import impute_scans, load_imputation_model, std_path
    from codebrain.registry import resolve_model

    inputs, out = named_files(args.input), Path(args.out)
    for contrast, path in inputs.items():
        if path.resolve() == out.resolve():
            raise InputError(f"--out {out}: is the {contrast} input; write the imputed {args.target} elsewhere")
    for path in [out] + ([std_path(out)] if args.uncertainty else []):
        if path.exists() and not args.overwrite:
            raise InputError(f"--out {path}: exists; pass --overwrite to replace it")
    imputer, data = load_imputation_model(resolve_model(args.model), default_device())
    if "size" not in data:
        raise InputError(f"{args.model}: trained before checkpoints recorded their slice store; retrain it")
    with scratch_folder(out.parent, f".{out.name}.register") as work_dir:  # beside the output, swept if left
        report = impute_scans(imputer, data, inputs, args.target, out, args.register,
                              args.outside, work_dir, args.uncertainty)
    first, last = report["trained_range"]
    print(f"{args.out}: {args.target} imputed on {report['slices']} slices (normalised units, 0-1)")
    if report["std"]:
        print(f"{report['std']}: per-voxel std of {args.uncertainty} images decoded from sampled codes")
    voxel = "x".join(f"{v:g}" for v in report["input_voxel_size"])
    if report["resampled_to"] is not None:
        in_plane, through_plane = report["resampled_to"]
        print(f"note: the inputs ({voxel} mm) were resampled to the model's {in_plane:g} x {in_plane:g} x "
              f"{through_plane:g} mm and the result back onto {inputs[next(iter(inputs))]}'s grid")
    elif "voxel_size" not in data and not data.get("slicing", {}).get("spacing"):
        print(f"warning: {args.model} does not record the voxel size it was trained at; the inputs were sliced at "
              f"their own {voxel} mm")
    if report["window"] == "tiles":
        print(f"note: the brain is wider than the model's {data['size']} x {data['size']} window at this voxel size; "
              f"it was imputed in {report['windows']} overlapping windows, averaged where they overlap")
    if report["outside"] == "impute":
        print(f"note: {report['outside_trained_range']} of these brain slices lie outside the {last - first + 1} "
              f"middle slices the model was trained on ({first}-{last}); their imputation is less certain")
    else:
        print(f"note: only slices {first}-{last} (the trained range) were imputed; "
              f"{report['outside_trained_range']} other brain slices are left at 0")


def cmd_bids(args):
    from codebrain.evaluation.bids import run_bids_app

    outcome = run_bids_app(Path(args.bids_dir), Path(args.output_dir), args.model, args.participant_label,
                           args.target, args.register, args.uncertainty)
    for label, paths in outcome["imputed"].items():
        print(f"{label}: imputed {', '.join(path.name for path in paths)}")
    if outcome["complete"]:
        print(f"nothing missing, skipped: {', '.join(outcome['complete'])}")
    for label, reason in outcome["failed"].items():
        print(f"{label}: failed: {reason}", file=sys.stderr)
    print(f"derivatives in {Path(args.output_dir) / 'codebrain'}")
    return 1 if outcome["failed"] else 0


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="every scenario on a split: metrics/scenarios.csv, summary.csv, tables, figures")
    add_run_arguments(p, training=False)
    p.add_argument("--model", required=True, help="Stage II or direct-regressor checkpoint")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--uncertainty-samples", type=int, default=0,
                   help="K code samples per imputation for uncertainty.csv/png (CodeBrain with FSQ codes; 0: off)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="the experiments' summaries side by side (metrics/summary.csv)")
    p.add_argument("--summary", action="append", required=True, metavar="EXPERIMENT=SUMMARY_CSV")
    p.add_argument("--out", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--benchmarks", action="append", metavar="EXPERIMENT/METHOD=BENCHMARK_TSV[,...]",
                   help="a method's training jobs' Snakemake benchmark files: its training wall time")
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("impute-split", help="every scenario for every subject of a split, as NIfTI volumes")
    add_run_arguments(p, training=False)
    p.add_argument("--model", required=True, help="Stage II checkpoint")
    p.add_argument("--references", required=True, help='JSON {subject: reference volume} (the grid to write on)')
    p.add_argument("--truths", help='JSON {subject: {contrast: volume, "seg": labels}}: BraSyn\'s 3D scores of each '
                                    'imputation against its real volume, in imputed.tsv')
    p.add_argument("--split", default="test")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--uncertainty-samples", type=int, default=0,
                   help="K code samples: also <scenario>_<target>_std.nii.gz, the per-voxel std (FSQ models; 0: off)")
    p.set_defaults(func=cmd_impute_split)

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

    p = sub.add_parser("impute", help="impute a missing contrast for your own subject")
    p.add_argument("--model", required=True, help="Stage II checkpoint (results/<name>/models/<experiment>/stage2.pt) or "
                                                  "registered model (models:/<dataset>-<experiment>@champion)")
    p.add_argument("--input", action="append", required=True, metavar="CONTRAST=PATH")
    p.add_argument("--target", required=True, help="the contrast to impute")
    p.add_argument("--out", required=True, help="output NIfTI, on the first input's grid")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--register", action="store_true", help="rigidly register the inputs to the first one (ANTs)")
    p.add_argument("--outside", choices=["impute", "skip"], default="impute",
                   help="brain slices outside the trained middle range: impute them too, or leave them at 0")
    p.add_argument("--uncertainty", type=int, nargs="?", const=8, default=0, metavar="K",
                   help="also write <out>_std.nii.gz, the per-voxel std of K (default 8) images decoded from codes "
                        "sampled from E_prior")
    p.set_defaults(func=cmd_impute)

    p = sub.add_parser("bids", help="BIDS App: impute what each subject lacks, as BIDS derivatives "
                                    "(OUTPUT_DIR/codebrain/sub-*/anat/*_desc-imputed_*.nii.gz)")
    p.add_argument("bids_dir", help="the BIDS dataset (read only)")
    p.add_argument("output_dir", help="derivatives go to OUTPUT_DIR/codebrain")
    p.add_argument("analysis_level", choices=["participant"], help="participant: each subject (and session)")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL", help="subjects to process (default: all)")
    p.add_argument("--model", required=True, help="Stage II checkpoint or models:/ URI")
    p.add_argument("--target", nargs="+", help="contrasts to impute (default: every one the model knows and a "
                                               "subject lacks)")
    p.add_argument("--register", action="store_true", help="rigidly register each subject's scans to its first one")
    p.add_argument("--uncertainty", type=int, nargs="?", const=8, default=0, metavar="K",
                   help="also write desc-uncertainty: the per-voxel std of K (default 8) sampled decodings")
    p.set_defaults(func=cmd_bids)
