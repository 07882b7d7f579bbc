"""Rigid (or affine) ANTs registration of each contrast to the subject's reference contrast.

Each moving contrast is resampled onto the reference grid; the ANTs transform and a QC record
(Mattes mutual information with the reference before and after) are kept beside the volumes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ants
import numpy as np
from ants import config as ants_config

from codebrain.io import scratch_folder, write_atomic
from codebrain.data.nifti import load_volume

TRANSFORM_TYPES = {"rigid": "Rigid", "affine": "Affine"}
# ANTsPy's default pyramid starts at 1/8 resolution, too coarse for clinical volumes with 5-6 mm
# slices: on the real IXI002 T1 it ended 1.8-6.2 mm off from run to run. Three levels from 1/4
# end within 0.5 mm there, repeatably (tests/test_registration.py).
PYRAMID = {"aff_shrink_factors": (4, 2, 1), "aff_smoothing_sigmas": (2, 1, 0), "aff_iterations": (1000, 500, 200)}
LPS = np.diag([-1.0, -1.0, 1.0])  # ITK's physical space is LPS, NIfTI's world is RAS


def mutual_information(fixed: ants.ANTsImage, moving_on_fixed: ants.ANTsImage) -> float:
    """Mattes mutual information (higher is more similar); ANTs reports it negated."""
    return -float(ants.image_similarity(fixed, moving_on_fixed, metric_type="MattesMutualInformation"))


def register_subject(files: dict[str, Path], reference: str, out_dir: Path, method: str = "rigid",
                     seed: int = 0) -> dict:
    """Register every contrast in `files` to `files[reference]`; write volumes, transforms, qc.json."""
    if method not in TRANSFORM_TYPES:
        raise ValueError(f"registration.method {method!r} unknown; choose from {sorted(TRANSFORM_TYPES)} or none")
    for path in files.values():
        load_volume(path)  # clear errors for corrupt, 4D or NaN input before ANTs sees it
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # ANTsPy >= 0.5 ignores registration(random_seed=...): its metric sampling draws from this global seed (and
    # one thread), and antsRegistration reads --random-seed 0 as "draw one", so seed s goes to ANTs as s + 1;
    # without it every run of the same subject registered differently
    ants_config.set_ants_deterministic(True, seed + 1)
    # ANTs writes its transforms under a prefix, by default in the system temporary folder and never removed
    with scratch_folder(out_dir, ".ants-") as ants_dir:
        fixed = ants.image_read(str(files[reference]), pixeltype="float")
        qc = {"reference": reference, "method": method, "contrasts": {}}
        for contrast, path in files.items():
            if contrast == reference:
                registered = fixed
            else:
                moving = ants.image_read(str(path), pixeltype="float")
                before = ants.resample_image_to_target(moving, fixed, interp_type="linear")
                result = ants.registration(fixed, moving, type_of_transform=TRANSFORM_TYPES[method],
                                           aff_metric="mattes", outprefix=f"{ants_dir}/{contrast}_", **PYRAMID)
                registered = result["warpedmovout"]
                transform_file = out_dir / f"{contrast}_to_{reference}.mat"
                with write_atomic(transform_file) as tmp:
                    shutil.copyfile(result["fwdtransforms"][0], tmp)
                qc["contrasts"][contrast] = {
                    "mi_before": mutual_information(fixed, before),
                    "mi_after": mutual_information(fixed, registered),
                    "transform": transform_file.name,
                }
            with write_atomic(out_dir / f"{contrast}.nii.gz") as tmp:
                ants.image_write(registered, str(tmp))
        with write_atomic(out_dir / "qc.json") as tmp:
            tmp.write_text(json.dumps(qc, indent=1))
    return qc


def fixed_to_moving_ras(transform_file: str | Path) -> np.ndarray:
    """The ANTs transform (fixed -> moving point map) as a 4x4 matrix in RAS world coordinates."""
    transform = ants.read_transform(str(transform_file))
    params = np.asarray(transform.parameters, dtype=float)
    centre = np.asarray(transform.fixed_parameters, dtype=float)
    dim = transform.dimension
    matrix, translation = params[: dim * dim].reshape(dim, dim), params[dim * dim:]
    lps = np.eye(4)  # ITK: y = A (x - c) + t + c
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    flip = np.eye(4)
    flip[:3, :3] = LPS
    return flip @ lps @ flip
