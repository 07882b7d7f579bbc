"""Slices back into a volume on the subject's reference grid: the inverse of slices.extract_subject.

Uncrop each S x S slice into the RAS-reoriented volume at its z, undo the min-max
normalisation with the stored range, reorient to the reference's voxel order, and keep the
reference's affine and header. Voxels outside the sliced range and window stay 0.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np


def from_canonical(data: np.ndarray, image: nib.Nifti1Image) -> np.ndarray:
    """Inverse of slices.canonical: a RAS voxel array back into the image's own voxel order."""
    ornt = nib.orientations.io_orientation(image.affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    return nib.orientations.apply_orientation(data, nib.orientations.ornt_transform(ras, ornt))


def uncrop(slices: np.ndarray, corner: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """K x S x S slices cut at `corner` -> K x X x Y, the parts of the window inside the volume."""
    x0, y0 = corner
    size = slices.shape[-1]
    out = np.zeros((len(slices),) + tuple(shape), np.float32)
    sx = slice(max(x0, 0), min(x0 + size, shape[0]))
    sy = slice(max(y0, 0), min(y0 + size, shape[1]))
    out[:, sx, sy] = slices[:, sx.start - x0: sx.stop - x0, sy.start - y0: sy.stop - y0]
    return out


def restack(slices: np.ndarray, z: np.ndarray, corner: tuple[int, int], low: float, high: float,
            reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """K x S x S normalised slices -> a float32 NIfTI on the reference grid, in the original intensity scale."""
    ras_shape = nib.orientations.apply_orientation(np.empty(reference.shape[:3], bool),
                                                   nib.orientations.io_orientation(reference.affine)).shape
    volume = np.zeros(ras_shape, np.float32)
    planes = uncrop(np.clip(slices.astype(np.float32), 0, 1), corner, ras_shape[:2])  # K x X x Y
    volume[:, :, z] = (planes * (high - low) + low).transpose(1, 2, 0)
    data = from_canonical(volume, reference)
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    header["scl_slope"], header["scl_inter"] = 1, 0
    return nib.Nifti1Image(data, reference.affine, header)
