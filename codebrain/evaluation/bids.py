"""BIDS App: a BIDS dataset's anatomical scans in, every contrast a subject (or session) lacks out, as BIDS
derivatives (`codebrain bids BIDS_DIR OUTPUT_DIR participant --model M`, the BIDS-Apps command line).

Names: OUTPUT_DIR/codebrain/sub-<label>/[ses-<label>/]anat/sub-<label>_[ses-<label>_][ce-gadolinium_]
desc-imputed_<suffix>.nii.gz with a JSON sidecar (Sources, model, code version, voxel sizes, units), and
desc-uncertainty_<suffix> for the per-voxel std when asked; dataset_description.json says DatasetType derivative.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from codebrain.io import InputError, scratch_folder, sha256sum, write_atomic
from codebrain.provenance import code_version

BIDS_VERSION = "1.10.0"
# contrast -> (BIDS suffix, entities before desc): the anatomical suffixes of the BIDS specification
BIDS_NAMES = {"T1": ("T1w", {}), "T2": ("T2w", {}), "PD": ("PDw", {}), "FLAIR": ("FLAIR", {}),
              "T1Gd": ("T1w", {"ce": "gadolinium"})}
UNITS = ("0-1: the inputs normalised as the model's training slices were (see Normalisation), as a missing "
         "contrast has no intensity scale of its own")


@dataclass
class Visit:
    """One subject, or one session of a subject: its scans by contrast, and what could not be read."""
    subject: str
    session: str | None
    scans: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    def folder(self) -> Path:
        return Path(f"sub-{self.subject}") / (f"ses-{self.session}" if self.session else "") / "anat"


def entities(path: Path) -> tuple[dict[str, str], str]:
    """sub-01_ses-1_ce-gadolinium_T1w.nii.gz -> ({"sub": "01", "ses": "1", "ce": "gadolinium"}, "T1w")."""
    stem = path.name.split(".")[0]
    *pairs, suffix = stem.split("_")
    return dict(pair.split("-", 1) for pair in pairs if "-" in pair), suffix


def contrast_of(path: Path) -> str | None:
    """The model contrast a BIDS anatomical scan is: T1w with a `ce` entity is T1Gd; None for any other suffix."""
    found, suffix = entities(path)
    for contrast, (bids_suffix, extra) in BIDS_NAMES.items():
        if suffix == bids_suffix and bool(extra) == ("ce" in found):
            return contrast
    return None


def find_visits(bids_dir: Path, participants: list[str] | None = None) -> list[Visit]:
    """Every sub-*/[ses-*/]anat/ folder with NIfTI scans; participant labels with or without `sub-`."""
    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    wanted = {label.removeprefix("sub-") for label in participants or []}
    subjects = sorted(p.name.removeprefix("sub-") for p in bids_dir.glob("sub-*") if p.is_dir())
    unknown = sorted(wanted - set(subjects))
    if unknown:
        raise InputError(f"--participant-label {' '.join(unknown)}: not in {bids_dir} (it has {', '.join(subjects)})")
    visits = []
    for subject in (s for s in subjects if not wanted or s in wanted):
        sessions = sorted(p.name.removeprefix("ses-") for p in (bids_dir / f"sub-{subject}").glob("ses-*"))
        for session in sessions or [None]:
            visit = Visit(subject, session)
            for path in sorted((bids_dir / visit.folder()).glob("*.nii*")):
                contrast = contrast_of(path)
                if contrast is None:
                    continue
                if contrast in visit.scans:
                    visit.problems.append(f"two {contrast} scans ({visit.scans[contrast].name}, {path.name}); "
                                          "keep one in the anat folder")
                visit.scans[contrast] = path
            visits.append(visit)
    return visits


def derivative_path(visit: Visit, contrast: str, desc: str, extension: str = ".nii.gz") -> Path:
    suffix, extra = BIDS_NAMES[contrast]
    parts = [f"sub-{visit.subject}"] + ([f"ses-{visit.session}"] if visit.session else [])
    parts += [f"{key}-{value}" for key, value in extra.items()] + [f"desc-{desc}", suffix]
    return visit.folder() / ("_".join(parts) + extension)


def write_dataset_description(out_dir: Path, bids_dir: Path) -> None:
    version = code_version()
    description = {"Name": "CodeBrain imputed contrasts", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "codebrain", "Version": version["version"],
                                    "Description": f"git commit {version['git_commit']}"}],
                   "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
                   "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()}}
    with write_atomic(out_dir / "dataset_description.json") as tmp:
        tmp.write_text(json.dumps(description, indent=2))


def model_record(uri: str, checkpoint: Path, data: dict) -> dict:
    """What the sidecars say of the model: as given (path or models:/ URI), its file and sha256, its voxel size."""
    from codebrain.evaluation.impute import trained_spacing

    return {"URI": uri, "Path": str(checkpoint.resolve()), "SHA256": sha256sum(checkpoint),
            "TrainedVoxelSize": trained_spacing(data)}


def sidecar(visit: Visit, bids_dir: Path, model: dict, data: dict, report: dict, samples: int, kind: str) -> dict:
    version = code_version()
    return {
        "Description": (f"{kind} by CodeBrain from the subject's other contrasts" if kind == "imputed" else
                        f"per-voxel standard deviation of {samples} images decoded from codes sampled from E_prior"),
        "Sources": [f"bids:raw:{path.relative_to(bids_dir).as_posix()}" for path in visit.scans.values()],
        "Units": UNITS,
        "Normalisation": {key: value for key, value in data.get("slicing", {}).items()
                          if key in ("normalisation", "lower_percentile", "upper_percentile")},
        "CodeBrainModel": model,
        "CodeBrainVersion": {"Version": version["version"], "GitCommit": version["git_commit"]},
        "InputVoxelSize": [float(v) for v in report["input_voxel_size"]],
        "ResampledTo": report["resampled_to"],
        "ImputedSlices": report["slices"],
    }


def impute_visit(visit: Visit, bids_dir: Path, out_dir: Path, model: dict, loaded: tuple, targets: list[str],
                 register: bool, samples: int) -> list[Path]:
    """Impute `targets` for one visit; returns the images written. Registration (when asked) runs once.
    model: its `model_record`."""
    from codebrain.data.registration import register_subject
    from codebrain.evaluation.impute import impute_scans

    imputer, data = loaded
    inputs = dict(visit.scans)
    written = []
    with scratch_folder(out_dir / visit.folder(), f".{visit.label}.register") as work_dir:  # swept if left
        if register and len(inputs) > 1:
            register_subject(inputs, next(iter(inputs)), work_dir, "rigid", 0)
            inputs = {contrast: work_dir / f"{contrast}.nii.gz" for contrast in inputs}
        for target in targets:
            image = out_dir / derivative_path(visit, target, "imputed")
            spread = out_dir / derivative_path(visit, target, "uncertainty")
            report = impute_scans(imputer, data, inputs, target, image, uncertainty_samples=samples,
                                  std_out=spread)
            for path, kind in [(image, "imputed")] + ([(spread, "uncertainty")] if samples else []):
                with write_atomic(path.with_name(path.name.replace(".nii.gz", ".json"))) as tmp:
                    tmp.write_text(json.dumps(sidecar(visit, bids_dir, model, data, report, samples, kind), indent=2))
            written.append(image)
    return written


def run_bids_app(bids_dir: Path, out_dir: Path, model_uri: str, participants: list[str] | None = None,
                 targets: list[str] | None = None, register: bool = False, samples: int = 0) -> dict:
    """Every visit: impute what it lacks (or `targets`), skip a complete one, report a failing one and go on.
    Returns {"imputed": {label: [paths]}, "complete": [labels], "failed": {label: reason}}."""
    from tqdm import tqdm

    from codebrain.evaluation.impute import load_imputation_model
    from codebrain.io import default_device
    from codebrain.registry import resolve_model

    bids_dir, out_dir, checkpoint = Path(bids_dir), Path(out_dir) / "codebrain", resolve_model(str(model_uri))
    visits = find_visits(bids_dir, participants)
    imputer, data = load_imputation_model(checkpoint, default_device())
    model = model_record(str(model_uri), checkpoint, data)
    contrasts = imputer.contrasts
    unknown = sorted(set(targets or []) - set(contrasts))
    if unknown:
        raise InputError(f"--target {' '.join(unknown)}: this model imputes {', '.join(contrasts)}")
    loaded = (imputer, data)
    outcome = {"imputed": {}, "complete": [], "failed": {}}
    write_dataset_description(out_dir, bids_dir)
    for visit in tqdm(visits, desc="bids", unit="visit"):
        known = {c: p for c, p in visit.scans.items() if c in contrasts}
        missing = [c for c in (targets or contrasts) if c not in known]
        if visit.problems or not known:
            outcome["failed"][visit.label] = "; ".join(visit.problems) or f"no scan of {', '.join(contrasts)}"
            continue
        if not missing:
            outcome["complete"].append(visit.label)
            continue
        visit.scans = known
        try:
            outcome["imputed"][visit.label] = impute_visit(visit, bids_dir, out_dir, model, loaded, missing,
                                                           register, samples)
        except (InputError, ValueError, RuntimeError, OSError) as err:
            outcome["failed"][visit.label] = str(err) or traceback.format_exc(limit=1)
    return outcome
