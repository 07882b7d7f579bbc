"""Slices back into a volume on the subject's reference grid: the inverse of slices.extract_subject.

Uncrop each S x S slice (or overlapping tiles, averaged) into the working-grid volume at its z,
undo the min-max normalisation with the stored range, and go back to the reference's grid:
reorient to its voxel order, or, where slices were cut at another voxel size (`spacing`),
resample linearly onto it. The reference's affine and header are kept. Voxels outside the
sliced range and window stay 0.
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


def assemble(tiles: list[tuple[np.ndarray, tuple[int, int]]], shape: tuple[int, int]) -> np.ndarray:
    """K x S x S tiles cut at their corners -> K x X x Y, averaged where tiles overlap."""
    total = count = 0
    for slices, corner in tiles:
        total = total + uncrop(slices, corner, shape)
        count = count + uncrop(np.ones_like(slices, np.float32), corner, shape)
    return total / np.maximum(count, 1)


def restack(tiles: list[tuple[np.ndarray, tuple[int, int]]], z: np.ndarray, low: float, high: float,
            reference: nib.Nifti1Image, spacing: list[float] | None = None) -> nib.Nifti1Image:
    """K x S x S normalised slices (one or more tiles) -> a float32 NIfTI on the reference grid, in the original
    intensity scale."""
    from codebrain.data.slices import working_grid

    if spacing is None:
        grid_shape = nib.orientations.apply_orientation(np.empty(reference.shape[:3], bool),
                                                        nib.orientations.io_orientation(reference.affine)).shape
    else:
        grid_shape, grid_affine = working_grid(reference, spacing)
    volume = np.zeros(grid_shape, np.float32)
    planes = assemble([(np.clip(s.astype(np.float32), 0, 1), c) for s, c in tiles], grid_shape[:2])  # K x X x Y
    volume[:, :, z] = (planes * (high - low) + low).transpose(1, 2, 0)
    if spacing is None:
        data = from_canonical(volume, reference)
    else:
        from nibabel.processing import resample_from_to

        moved = resample_from_to(nib.Nifti1Image(volume, grid_affine), reference, order=1, cval=0)
        data = np.asarray(moved.dataobj, dtype=np.float32)
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    header["scl_slope"], header["scl_inter"] = 1, 0
    return nib.Nifti1Image(data, reference.affine, header)
