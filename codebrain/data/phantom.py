"""Synthetic multi-contrast brain cohort from the MNI152 2009a maps shipped inside nilearn.

Per subject: a smooth random deformation of the template's tissue maps (GM, WM, CSF),
jittered tissue relaxation times, contrasts from MR signal equations, a smooth bias field per
contrast and Rician noise. The template is skull-stripped, so are the phantoms. Two flavours write the layout of the real dataset they mimic:

- ``ixi``: T1, T2, PD, each with its own random rigid head pose and T1 on its own voxel grid;
  the true pose is saved beside each image (``*.pose.json``) so registration has a known answer.
- ``brats``: T1, T2, FLAIR, T1Gd and a label volume (1 necrosis, 2 oedema, 3 enhancing),
  skull-stripped and co-registered.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Literal

import nibabel as nib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt
from scipy import ndimage

from codebrain.data.layouts import phantom_subject_files, phantom_subject_id
from codebrain.io import write_atomic
from codebrain.data.nifti import save_volume

# Relaxation times [ms] and proton density at 1.5 T (textbook values).
TISSUES = {
    "wm": (650.0, 80.0, 0.70),
    "gm": (1100.0, 100.0, 0.82),
    "csf": (4000.0, 2000.0, 1.00),
    "necrosis": (2500.0, 600.0, 0.95),
    "enhancing": (1300.0, 130.0, 0.85),
    "oedema": (1300.0, 250.0, 0.92),
}
GD_RELAXIVITY = 4e-3  # r1 [1 / (mM ms)]
GD_CONCENTRATION = {"enhancing": 0.5}  # [mM]; only the enhancing rim takes up contrast agent

# Sequence timings [ms]: spin echo (TR, TE) or inversion recovery (TR, TE, TI).
SEQUENCES = {
    "T1": {"tr": 500.0, "te": 12.0},
    "T2": {"tr": 4000.0, "te": 100.0},
    "PD": {"tr": 4000.0, "te": 12.0},
    "FLAIR": {"tr": 9000.0, "te": 120.0, "ti": 2500.0},
    "T1Gd": {"tr": 500.0, "te": 12.0, "gd": True},
}
FLAVOURS = {"ixi": ("T1", "T2", "PD"), "brats": ("T1", "T2", "FLAIR", "T1Gd")}
INTENSITY_SCALE = 1000.0  # signal 1.0 -> 1000, stored as int16 like the real scans
LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 3}


class PhantomConfig(BaseModel):
    """The `phantom` section: when present, the raw data are generated (a synthetic cohort), not read."""

    model_config = ConfigDict(extra="forbid")

    flavour: Literal[tuple(FLAVOURS)] = "ixi"
    n_subjects: PositiveInt = 8
    downsample: Annotated[float, Field(ge=1)] = 1.0  # 1 = the template's 1 mm grid; 2 halves each axis
    seed: int = 0
    max_rotation_deg: NonNegativeFloat = 5.0  # ixi: per-contrast head pose
    max_translation_mm: NonNegativeFloat = 5.0
    deformation_mm: NonNegativeFloat = 3.0
    noise: NonNegativeFloat = 0.015  # Rician sigma as a fraction of INTENSITY_SCALE
    bias: NonNegativeFloat = 0.15  # peak relative amplitude of the bias field


def signal(t1, t2, pd, sequence: dict) -> np.ndarray:
    """Magnitude signal of a spin-echo or inversion-recovery sequence."""
    tr, te = sequence["tr"], sequence["te"]
    if "ti" in sequence:
        longitudinal = np.abs(1.0 - 2.0 * np.exp(-sequence["ti"] / t1) + np.exp(-tr / t1))
    else:
        longitudinal = 1.0 - np.exp(-tr / t1)
    return pd * longitudinal * np.exp(-te / t2)


@lru_cache(maxsize=4)
def template_tissues(downsample: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue fraction maps (gm, wm, csf) on the template grid and their affine."""
    data_dir = Path(find_spec("nilearn").origin).parent / "datasets" / "data"  # no nilearn import needed
    stem = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    t1_image = nib.load(data_dir / stem.format("t1"))
    gm = np.asarray(nib.load(data_dir / stem.format("gm")).dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(data_dir / stem.format("wm")).dataobj, dtype=np.float32)
    gm, wm = gm / gm.max(), wm / wm.max()

    brain = ndimage.binary_closing(gm + wm > 0.3, iterations=3)
    intracranial = ndimage.binary_dilation(ndimage.binary_fill_holes(brain), iterations=2)
    intracranial = ndimage.gaussian_filter(intracranial.astype(np.float32), 1.0)
    csf = np.clip(intracranial - gm - wm, 0.0, 1.0)
    tissues = {"gm": gm, "wm": wm, "csf": csf}
    affine = t1_image.affine.copy()
    if downsample != 1.0:
        tissues = {k: ndimage.zoom(v, 1.0 / downsample, order=1) for k, v in tissues.items()}
        affine[:3, :3] *= downsample
    return tissues, affine


def rigid_matrix(angles_deg: np.ndarray, translation_mm: np.ndarray) -> np.ndarray:
    """4x4 world transform: rotation about x, y, z (degrees), then translation (mm)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = translation_mm
    return matrix


def smooth_field(shape, rng: np.random.Generator, control_points: int = 5) -> np.ndarray:
    """Smooth random field in [-1, 1]: cubic upsampling of a coarse random grid."""
    coarse = rng.uniform(-1.0, 1.0, size=(control_points,) * 3)
    field = ndimage.zoom(coarse, [s / control_points for s in shape], order=3, mode="nearest")
    field = field[: shape[0], : shape[1], : shape[2]]
    return np.clip(field / (np.abs(field).max() + 1e-8), -1.0, 1.0)


def deform(maps: dict[str, np.ndarray], rng, amplitude_vox: float) -> dict[str, np.ndarray]:
    """Warp every map by one smooth random displacement field (the subject's anatomy)."""
    shape = next(iter(maps.values())).shape
    grid = np.indices(shape, dtype=np.float32)
    coords = [grid[i] + amplitude_vox * smooth_field(shape, rng) for i in range(3)]
    return {k: ndimage.map_coordinates(v, coords, order=1, mode="constant") for k, v in maps.items()}


def add_tumour(maps: dict[str, np.ndarray], rng, voxel_mm: float) -> np.ndarray:
    """Carve a necrotic core, enhancing rim and oedema into white matter; returns the labels."""
    shape = maps["wm"].shape
    candidates = np.argwhere(ndimage.binary_erosion(maps["wm"] > 0.9, iterations=max(1, int(6 / voxel_mm))))
    centre = candidates[rng.integers(len(candidates))]
    radii_mm = np.array([rng.uniform(5, 9), 0.0, 0.0])
    radii_mm[1] = radii_mm[0] + rng.uniform(3, 6)  # enhancing rim
    radii_mm[2] = radii_mm[1] + rng.uniform(8, 15)  # oedema
    grid = np.indices(shape, dtype=np.float32)
    stretch = rng.uniform(0.8, 1.25, size=3)
    distance = np.sqrt(sum(((grid[i] - centre[i]) * voxel_mm * stretch[i]) ** 2 for i in range(3)))
    distance += 3.0 * smooth_field(shape, rng, control_points=7)  # irregular borders

    labels = np.zeros(shape, np.uint8)
    labels[distance < radii_mm[2]] = LABELS["oedema"]
    labels[distance < radii_mm[1]] = LABELS["enhancing"]
    labels[distance < radii_mm[0]] = LABELS["necrosis"]
    labels[maps["gm"] + maps["wm"] < 0.3] = 0  # tumours stay in brain tissue

    for name, label in LABELS.items():
        region = (labels == label).astype(np.float32)
        if name == "oedema":  # oedema is swollen tissue: it keeps part of the tissue's signal
            maps[name] = region * (maps["gm"] + maps["wm"]) * 0.8
        else:
            maps[name] = region
    tumour = np.clip(sum(maps[n] for n in LABELS), 0.0, 1.0)
    for name in ("gm", "wm", "csf"):
        maps[name] = maps[name] * (1.0 - tumour)
    return labels


def contrast_image(maps, contrast: str, rng) -> np.ndarray:
    """Partial-volume mixture of tissue signals for one contrast, with jittered T1/T2/PD."""
    sequence = SEQUENCES[contrast]
    image = np.zeros(maps["gm"].shape, np.float32)
    for tissue, fraction in maps.items():
        t1, t2, pd = (v * rng.uniform(0.95, 1.05) for v in TISSUES[tissue])
        if sequence.get("gd") and tissue in GD_CONCENTRATION:
            t1 = 1.0 / (1.0 / t1 + GD_RELAXIVITY * GD_CONCENTRATION[tissue])
        image += fraction * signal(t1, t2, pd, sequence)
    return image


def finish(image: np.ndarray, rng, cfg: PhantomConfig, mask: np.ndarray | None) -> np.ndarray:
    """Bias field, Rician noise, int16 scale (and skull-stripping when a mask is given)."""
    image = image * (1.0 + cfg.bias * smooth_field(image.shape, rng, control_points=3))
    image = image * INTENSITY_SCALE
    sigma = cfg.noise * INTENSITY_SCALE
    image = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    if mask is not None:
        image = image * mask
    return np.clip(np.round(image), 0, np.iinfo(np.int16).max).astype(np.int16)


def resample_posed(image, anatomy_affine, pose, out_affine, out_shape) -> np.ndarray:
    """Image of the anatomy seen with head pose `pose` on a (possibly different) voxel grid.

    Voxel v of the output shows the anatomy at world point pose @ out_affine @ v.
    """
    vox_from_vox = np.linalg.inv(anatomy_affine) @ pose @ out_affine
    return ndimage.affine_transform(image, vox_from_vox, output_shape=out_shape, order=1, mode="constant")


def make_subject(index: int, cfg: PhantomConfig, root: Path) -> dict[str, Path]:
    """Generate subject `index` of the cohort under `root`; returns contrast -> written file."""
    if cfg.flavour not in FLAVOURS:
        raise ValueError(f"unknown phantom flavour {cfg.flavour!r}; choose from {sorted(FLAVOURS)}")
    rng = np.random.default_rng([cfg.seed, index])
    template, affine = template_tissues(float(cfg.downsample))
    voxel_mm = float(np.abs(affine[:3, :3]).sum(axis=0)[0])
    maps = deform(dict(template), rng, cfg.deformation_mm / voxel_mm)
    files = phantom_subject_files(cfg.flavour, root, phantom_subject_id(cfg.flavour, index), FLAVOURS[cfg.flavour])

    if cfg.flavour == "brats":
        labels = add_tumour(maps, rng, voxel_mm)
        brain = ndimage.binary_dilation(sum(maps.values()) > 0.2, iterations=1)
        for contrast in FLAVOURS["brats"]:
            image = finish(contrast_image(maps, contrast, rng), rng, cfg, brain)
            save_volume(image, affine, files[contrast], dtype=np.int16)
        save_volume(labels, affine, files["seg"], dtype=np.uint8)
        return files

    for contrast in FLAVOURS["ixi"]:
        angles = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, 3)
        translation = rng.uniform(-cfg.max_translation_mm, cfg.max_translation_mm, 3)
        pose = rigid_matrix(angles, translation)
        out_affine, out_shape = affine.copy(), maps["gm"].shape
        if contrast == "T1":  # IXI's T1 has its own grid: 1.2 mm along the first axis here
            out_affine[:, 0] *= 1.2
            out_shape = (int(round(out_shape[0] / 1.2)),) + out_shape[1:]
        clean = contrast_image(maps, contrast, rng)
        image = finish(resample_posed(clean, affine, pose, out_affine, out_shape), rng, cfg, None)
        save_volume(image, out_affine, files[contrast], dtype=np.int16)
        with write_atomic(files[contrast + ".pose"]) as tmp:
            tmp.write_text(json.dumps({"anatomy_from_world": pose.tolist(), "angles_deg": angles.tolist(),
                                       "translation_mm": translation.tolist()}, indent=1))
    return files


def true_fixed_to_moving(fixed_pose: np.ndarray, moving_pose: np.ndarray) -> np.ndarray:
    """World map from a fixed-image point to the moving-image point showing the same anatomy."""
    return np.linalg.inv(moving_pose) @ fixed_pose
