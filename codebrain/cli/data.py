"""Data steps, in DAG order: phantom | download, unpack -> check-raw -> register -> extract-slices -> build-store."""

from __future__ import annotations

import json
from pathlib import Path

from codebrain.cli.common import add_tracking_arguments, named_files, step_run
from codebrain.data.layouts import MATCHERS
from codebrain.io import InputError


def phantom_config(section: dict):
    """PhantomConfig of a --config section and the flags, or a refusal naming each bad key."""
    from pydantic import ValidationError

    from codebrain.data.phantom import PhantomConfig
    from codebrain.validation import error_lines

    try:
        return PhantomConfig.model_validate(section)
    except ValidationError as err:
        raise InputError(error_lines(err, PhantomConfig, ("--config",))) from None


def cmd_phantom(args):
    from codebrain.data.phantom import make_subject

    flags = {"flavour": args.flavour, "n_subjects": args.n_subjects, "downsample": args.downsample, "seed": args.seed}
    cfg = phantom_config({**json.loads(args.config), **{k: v for k, v in flags.items() if v is not None}})
    for index in args.index or range(1, cfg.n_subjects + 1):
        with step_run(args, "make_phantom_subject", f"make_phantom_subject/{index}", subject=index) as tracker:
            written = make_subject(index, cfg, Path(args.root))
            tracker.log_dict({name: str(path) for name, path in written.items()}, "files.json")


def cmd_download(args):
    from codebrain.data.download import download, extract

    for spec in args.url:
        url, _, sha256 = spec.partition("#sha256=")
        folder, name = url.rsplit("/", 2)[-2:]
        if ".tar" in name:
            archive = download(url, Path(args.dest) / name, sha256 or None)
            if args.root:
                extract(archive, args.root)
        else:  # a single raw file (one subject's scan) goes straight into its subject folder under root
            download(url, Path(args.root or args.dest) / folder / name, sha256 or None)


def cmd_unpack(args):
    from codebrain.data.download import extract

    for archive in args.archive:
        print(extract(archive, args.root))


def cmd_split_msd(args):
    from codebrain.data.msd import split_subject

    with step_run(args, "split_msd_subject", f"split_msd_subject/{args.subject}", subject=args.subject) as tracker:
        written = split_subject(Path(args.image), Path(args.labels) if args.labels else None, args.subject,
                                args.contrasts, Path(args.out_root))
        tracker.log_dict({kind: str(path) for kind, path in written.items()}, "files.json")


def cmd_check_raw(args):
    from codebrain.data.layouts import discover
    from codebrain.data.manifest import build_manifest

    with step_run(args, "check_raw", "check_raw") as tracker:
        subjects = discover(args.root, args.layout, args.contrasts, args.on_missing, args.labels)
        manifest = build_manifest(subjects, Path(args.out))
        tracker.log_metrics({"subjects": manifest.subject.nunique(), "files": len(manifest)})
        tracker.log_artifact(args.out)
    print(f"{args.out}: {manifest.subject.nunique()} subjects, {len(manifest)} files")


def cmd_register(args):
    from codebrain.data.registration import register_subject

    subject = Path(args.out_dir).name
    with step_run(args, "register_subject", f"register_subject/{subject}", subject=subject) as tracker:
        qc = register_subject(named_files(args.input), args.reference, Path(args.out_dir), args.method, args.seed)
        tracker.log_metrics({f"{contrast}/{key}": value for contrast, result in qc["contrasts"].items()
                             for key, value in result.items() if key.startswith("mi_")})
        tracker.log_artifact(Path(args.out_dir) / "qc.json")
    print(json.dumps(qc))


def cmd_extract_slices(args):
    from codebrain.data.slices import extract_subject, slice_config

    cfg = slice_config(json.loads(args.config))
    files = named_files(args.input)
    labels = files.pop("seg", None)
    z_range = tuple(args.z_range) if args.z_range else None
    with step_run(args, "extract_slices", f"extract_slices/{args.subject}", subject=args.subject):
        extract_subject(args.subject, files, args.contrasts, cfg, Path(args.out), z_range, labels)


def cmd_build_store(args):
    import pandas as pd

    from codebrain.data.slices import slice_config
    from codebrain.data.store import assign_splits, build_store

    subject_files = {Path(f).name.removesuffix(".npz"): Path(f) for f in args.subject_slices}
    split_table = pd.read_csv(args.split_table, sep="\t") if args.split_table else None
    fractions = dict(zip(("train", "val", "test"), args.fractions))
    assignment = assign_splits(sorted(subject_files), fractions, args.seed, split_table, json.loads(args.pinned))
    with step_run(args, "build_slice_store", "build_slice_store") as tracker:
        summary = build_store(subject_files, assignment, args.contrasts, Path(args.out_dir),
                              slice_config(json.loads(args.config)))
        tracker.log_artifact(Path(args.out_dir) / "store.json")
    print(json.dumps(summary))


def add_parsers(sub) -> None:
    p = sub.add_parser("phantom", help="write a synthetic cohort in IXI or BraTS 2023 layout")
    p.add_argument("--root", required=True)
    p.add_argument("--config", default="{}", help="the workflow's phantom section as JSON (noise, bias, ...); the flags "
                                                  "below win; defaults: codebrain.data.phantom.PhantomConfig")
    p.add_argument("--flavour", choices=["ixi", "brats"])
    p.add_argument("--n-subjects", type=int)
    p.add_argument("--index", type=int, action="append", help="only subject number INDEX (repeatable)")
    p.add_argument("--downsample", type=float)
    p.add_argument("--seed", type=int)
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("download", help="resumable, checksum-verified download of archives (unpacked) or raw files")
    p.add_argument("--url", action="append", required=True, metavar="URL[#sha256=HEX]")
    p.add_argument("--dest", required=True, help="folder for the archives")
    p.add_argument("--root", help="raw-data folder: tarballs are unpacked into it; a single file goes into "
                                  "ROOT/<its URL's folder>/")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("unpack", help="unpack official tarballs (IXI-T1.tar ...) into the raw folder")
    p.add_argument("archive", nargs="+")
    p.add_argument("--root", required=True)
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("split-msd", help="one Decathlon Task01 subject's 4D volume -> BraTS-named 3D files")
    p.add_argument("--image", required=True, help="imagesTr/BRATS_NNN.nii.gz")
    p.add_argument("--labels", help="labelsTr/BRATS_NNN.nii.gz")
    p.add_argument("--subject", required=True)
    p.add_argument("--contrasts", nargs="+", required=True)
    p.add_argument("--out-root", required=True, help="writes OUT_ROOT/SUBJECT/SUBJECT_{t1,t1ce,t2,flair,seg}.nii.gz")
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_split_msd)

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
    p.add_argument("--pinned", default="{}", help="JSON {subject: split}: subjects that keep their split")
    p.add_argument("--out-dir", required=True)
    add_tracking_arguments(p)
    p.set_defaults(func=cmd_build_store)
