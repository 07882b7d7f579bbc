"""File layouts of the datasets we read: IXI, BraTS (2023 and 2018-2021 namings), the Medical Segmentation
Decathlon's Task01_BrainTumour, and BIDS.

`discover` maps a raw folder to {subject: {contrast: path}} using the dataset's own naming, with
contrasts under our canonical names (T1, T2, PD, FLAIR, T1Gd, plus `seg` for label volumes).
The phantom writes the same names through `phantom_subject_files`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np

from codebrain.io import InputError

DOWNLOAD_PAGES = {
    "ixi": "https://brain-development.org/ixi-dataset/",
    "brats": "https://www.synapse.org/brats2023 (BraTS 2023 adult glioma, registration required)",
    "bids": "https://bids.neuroimaging.io/ (organise your own data as BIDS)",
    "msd": "http://medicaldecathlon.com/ (Task01_BrainTumour.tar)",
}

IXI_PATTERN = re.compile(r"(?P<subject>IXI\d{3}-[A-Za-z]+-\d{4})-(?P<contrast>T1|T2|PD)\.nii(\.gz)?$")
BRATS_PATTERN = re.compile(r"(?P<subject>BraTS-[A-Z]+-\d{5}-\d{3})-(?P<contrast>t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$")
# 2018-2021: Brats18_<site>_<id>_1_t1ce.nii.gz, BraTS20_Training_001_t1.nii.gz, BraTS2021_00000_flair.nii.gz
BRATS_LEGACY_PATTERN = re.compile(
    r"(?P<subject>Brats1[78]_[A-Za-z0-9]+_[A-Za-z0-9]+_\d+|BraTS20_(Training|Validation)_\d{3}|BraTS2021_\d{5}"
    r"|BRATS_\d{3})"
    r"_(?P<contrast>t1|t1ce|t2|flair|seg)\.nii(\.gz)?$")
BIDS_PATTERN = re.compile(
    r"(?P<subject>sub-[A-Za-z0-9]+)(_(?P<session>ses-[A-Za-z0-9]+))?(?P<entities>(_[a-z]+-[A-Za-z0-9]+)*)"
    r"_(?P<suffix>T1w|T2w|PDw|FLAIR)\.nii(\.gz)?$"
)
# Medical Segmentation Decathlon Task01_BrainTumour: imagesTr/BRATS_001.nii.gz, one 4D volume of four contrasts,
# and labelsTr/BRATS_001.nii.gz; the DAG splits each into BraTS-named files first (`codebrain split-msd`)
MSD_PATTERN = re.compile(r"(?P<subject>BRATS_\d{3})\.nii(\.gz)?$")
MSD_IMAGE = "channels"  # the 4D volume's kind in discovery
CONTRASTS = ["T1", "T2", "PD", "FLAIR", "T1Gd"]  # our canonical names; each layout maps its own onto them
BRATS_SUFFIX = {"t1n": "T1", "t1c": "T1Gd", "t2w": "T2", "t2f": "FLAIR", "seg": "seg"}
BRATS_LEGACY_SUFFIX = {"t1": "T1", "t1ce": "T1Gd", "t2": "T2", "flair": "FLAIR", "seg": "seg"}
BIDS_SUFFIX = {"T1w": "T1", "T2w": "T2", "PDw": "PD", "FLAIR": "FLAIR"}


def _ixi_match(path: Path):
    m = IXI_PATTERN.search(path.name)
    return (m["subject"], m["contrast"]) if m else None


def _brats_match(path: Path):
    if m := BRATS_PATTERN.search(path.name):
        return m["subject"], BRATS_SUFFIX[m["contrast"]]
    if m := BRATS_LEGACY_PATTERN.fullmatch(path.name):
        return m["subject"], BRATS_LEGACY_SUFFIX[m["contrast"]]
    return None


def _msd_match(path: Path):
    m = MSD_PATTERN.fullmatch(path.name)
    if not m or path.parent.name not in ("imagesTr", "labelsTr"):
        return None
    return m["subject"], "seg" if path.parent.name == "labelsTr" else MSD_IMAGE


def _bids_match(path: Path):
    m = BIDS_PATTERN.fullmatch(path.name)
    if not m or path.parent.name != "anat":
        return None
    subject = m["subject"] + (f"_{m['session']}" if m["session"] else "")
    contrast = BIDS_SUFFIX[m["suffix"]]
    if contrast == "T1" and re.search(r"_ce-(gadolinium|gd|Gd|contrast)", m["entities"] or ""):
        contrast = "T1Gd"
    return subject, contrast


MATCHERS = {"ixi": _ixi_match, "brats": _brats_match, "bids": _bids_match, "msd": _msd_match}
LAYOUT_CONTRASTS = {"ixi": ["T1", "T2", "PD"], "brats": ["T1", "T2", "FLAIR", "T1Gd"], "bids": CONTRASTS,
                    "msd": ["FLAIR", "T1", "T1Gd", "T2"]}  # msd: the 4D volume's channels, in order


def nifti_files(root: Path) -> list[Path]:
    """Every NIfTI file under root, following symlinked folders (a data folder is often a link to shared storage),
    without macOS's "._" resource files (the Decathlon's tarballs hold one beside every volume)."""
    return sorted(Path(folder, name) for folder, _, names in os.walk(root, followlinks=True)
                  for name in names if ".nii" in name and not name.startswith("._"))


def discover(root: str | Path, layout: str, contrasts: list[str], on_missing: str = "drop",
             with_labels: bool = False) -> dict[str, dict[str, Path]]:
    """Subjects under `root` that have every required contrast: {subject: {contrast: path}}.

    Subjects lacking a contrast are reported on stderr and dropped, or raise when
    `on_missing == "fail"`. An absent or empty root raises with the dataset's download page.
    """
    root = Path(root)
    if layout not in MATCHERS:
        raise InputError(f"unknown layout {layout!r}; choose from {sorted(MATCHERS)}")
    if not root.is_dir():
        raise InputError(f"raw data folder {root} does not exist; get the data from {DOWNLOAD_PAGES[layout]}")
    found: dict[str, dict[str, Path]] = {}
    for path in nifti_files(root):
        match = MATCHERS[layout](path)
        if match is None:
            continue
        subject, contrast = match
        if contrast in found.setdefault(subject, {}):
            raise InputError(f"{path}: second {contrast} file for subject {subject} (first: {found[subject][contrast]})")
        found[subject][contrast] = path
    if not found:
        archives = sorted(p.name for p in root.glob("*.tar*"))
        hint = f" Found archives {archives}: unpack them with `codebrain unpack ARCHIVE... --root ROOT`." if archives else ""
        raise InputError(f"raw data folder {root} holds no {layout} NIfTI files.{hint} "
                         f"Get the data from {DOWNLOAD_PAGES[layout]}")

    required = ([MSD_IMAGE] if layout == "msd" else list(contrasts)) + (["seg"] if with_labels else [])
    complete, incomplete = {}, {}
    for subject, files in sorted(found.items()):
        missing = [c for c in required if c not in files]
        if missing:
            incomplete[subject] = missing
        else:
            complete[subject] = {c: files[c] for c in required}
    if incomplete:
        listing = ", ".join(f"{s} (no {'/'.join(m)})" for s, m in incomplete.items())
        if on_missing == "fail":
            raise InputError(f"{root}: {len(incomplete)} subjects lack a required contrast: {listing}")
        print(f"[codebrain] {root}: dropping {len(incomplete)} subjects lacking a required contrast: {listing}",
              file=sys.stderr)
    if not complete:
        raise InputError(f"{root}: no subject has all of {required}")
    return complete


BRATS_LABELS = (0, 1, 2, 3)  # 2023 convention: background, necrosis / non-enhancing core, oedema, enhancing


def brats_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """A BraTS label volume in the 2023 convention: the 2018-2021 enhancing label 4 becomes 3."""
    values = set(np.unique(labels).astype(int).tolist())
    if not values <= {0, 1, 2, 3, 4} or not np.array_equal(labels, np.round(labels)):
        raise InputError(f"{path}: labels {sorted(values)} are not BraTS labels (0, 1, 2, 3 or the 2018-2021 4)")
    if {3, 4} <= values:
        raise InputError(f"{path}: holds both label 3 (2023 enhancing) and 4 (2018-2021 enhancing)")
    return np.where(labels == 4, 3, labels).astype(np.uint8)


def msd_split_files(root: str | Path, subject: str, kinds) -> dict[str, Path]:
    """Where `codebrain split-msd` writes one Decathlon subject: BraTS 2018-2021 naming, so `brats` reads it."""
    suffix = {v: k for k, v in BRATS_LEGACY_SUFFIX.items()}
    return {kind: Path(root) / subject / f"{subject}_{suffix[kind]}.nii.gz" for kind in kinds}


def phantom_subject_id(flavour: str, index: int) -> str:
    """IXI001-Phantom-0001 / BraTS-PHA-00001-000: real naming, visibly synthetic."""
    return f"IXI{index:03d}-Phantom-{index:04d}" if flavour == "ixi" else f"BraTS-PHA-{index:05d}-000"


def phantom_subject_files(flavour: str, root: str | Path, subject: str, contrasts) -> dict[str, Path]:
    """Paths the phantom writes for one subject, in the real dataset's naming (volumes and poses)."""
    root = Path(root)
    if flavour == "ixi":
        files = {c: root / f"IXI-{c}" / f"{subject}-{c}.nii.gz" for c in contrasts}
        files.update({f"{c}.pose": root / f"IXI-{c}" / f"{subject}-{c}.pose.json" for c in contrasts})
        return files
    suffix = {v: k for k, v in BRATS_SUFFIX.items()}
    return {c: root / subject / f"{subject}-{suffix[c]}.nii.gz" for c in list(contrasts) + ["seg"]}
