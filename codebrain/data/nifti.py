"""Checked NIfTI reading and atomic writing.

Every reader in the pipeline goes through `load_volume`, so a corrupt, truncated, 4D or NaN
volume fails with one message that names the file; `write_atomic` keeps a killed job from
leaving a file that looks complete.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from codebrain.io import InputError, write_atomic


def load_volume(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a 3D NIfTI as float32 (with its image header), or raise InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises several types for truncated or corrupt files
        raise InputError(f"{path}: not a readable NIfTI volume ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, found shape {data.shape}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(f"{path}: {bad} voxels are NaN or infinite")
    return data, image


def voxel_sizes(image: nib.Nifti1Image) -> tuple[float, ...]:
    return tuple(float(z) for z in image.header.get_zooms()[:3])


def save_volume(data: np.ndarray, affine: np.ndarray, path: str | Path, dtype=np.float32) -> None:
    image = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with write_atomic(path) as tmp:
        nib.save(image, str(tmp))
