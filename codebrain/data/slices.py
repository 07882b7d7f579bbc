"""Axial slices from registered volumes, one subject at a time (the per-split store: data/store.py).

Per subject (`extract_subject`): volumes reoriented to RAS (axis 2 is axial) and, with
`spacing`, resampled to that voxel size (labels nearest-neighbour: `working_grid`), the middle K
axial slices of the brain (or a given range; with `train_extent: brain` every slice with brain,
of which training subjects keep all and the others the middle K), cropped/padded to S x S around the brain, each
contrast min-max normalised to [0, 1] (optionally between robust percentiles). The
normalisation range and crop are kept so imputations can go back to the original scale and grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import nibabel as nib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from scipy import ndimage

from codebrain.io import InputError, write_atomic
from codebrain.data.layouts import brats_labels
from codebrain.data.nifti import load_volume

class SliceConfig(BaseModel):
    """The `slices` section: how volumes become the store's slices."""

    model_config = ConfigDict(extra="forbid")

    n_slices: PositiveInt = 90  # K middle axial slices of the brain (ignored for subjects in splits.table)
    size: Annotated[int, Field(ge=8)] = 256  # S: crop/pad to S x S
    normalisation: Literal["minmax", "percentile"] = "minmax"
    lower_percentile: Annotated[float, Field(ge=0, le=100)] = 0.0  # percentile mode: over brain voxels
    upper_percentile: Annotated[float, Field(ge=0, le=100)] = 99.5
    dtype: Literal["float16", "float32"] = "float16"
    # [in-plane, through-plane] mm to resample every volume to (labels nearest-neighbour); None keeps each grid
    spacing: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)] | None = None
    # middle: training subjects give their K middle slices too; brain: every axial slice with brain (validation and
    # test keep the middle K)
    train_extent: Literal["middle", "brain"] = "middle"


def canonical(data: np.ndarray, image: nib.Nifti1Image) -> np.ndarray:
    """Reorient a volume's voxel array to RAS so that axis 2 runs inferior -> superior."""
    ornt = nib.orientations.io_orientation(image.affine)
    return nib.orientations.apply_orientation(data, ornt)


def working_grid(image: nib.Nifti1Image, spacing: list[float]) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) of the RAS grid at `spacing` mm that covers the image (what slices are cut from)."""
    from nibabel.processing import vox2out_vox

    in_plane, through_plane = spacing
    return vox2out_vox((image.shape[:3], image.affine), (in_plane, in_plane, through_plane))


def to_working_grid(data: np.ndarray, image: nib.Nifti1Image, spacing: list[float] | None,
                    order: int = 1) -> np.ndarray:
    """A voxel array in RAS order on the grid slices are cut from: reoriented only (spacing None, exact), or
    resampled to `spacing` mm (order 1: intensities, order 0: labels)."""
    if spacing is None:
        return canonical(data, image)
    from nibabel.processing import resample_from_to

    moved = resample_from_to(nib.Nifti1Image(data, image.affine), working_grid(image, spacing), order=order, cval=0)
    return np.asarray(moved.dataobj, dtype=data.dtype)


def grid_voxel_size(image: nib.Nifti1Image, spacing: list[float] | None) -> list[float]:
    """Voxel size (mm) in RAS axis order of the grid slices are cut from."""
    if spacing is not None:
        return [float(spacing[0]), float(spacing[0]), float(spacing[1])]
    ornt = nib.orientations.io_orientation(image.affine)
    zooms = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    return [float(zooms[int(axis)]) for axis in np.argsort(ornt[:, 0])]


REGISTRATION_HINT = "turn registration on (registration.method: rigid)"


def check_same_grid(reference: nib.Nifti1Image, image: nib.Nifti1Image, path: Path, reference_path: Path,
                    hint: str = REGISTRATION_HINT):
    if reference.shape[:3] != image.shape[:3] or not np.allclose(reference.affine, image.affine, atol=1e-3):
        raise InputError(f"{path}: voxel grid {image.shape[:3]} differs from its reference {reference_path} "
                         f"{reference.shape[:3]}; {hint}")


def brain_mask(volumes: list[np.ndarray]) -> np.ndarray:
    """Voxels above 10% of the robust maximum in any contrast, holes filled."""
    mask = np.zeros(volumes[0].shape, bool)
    for volume in volumes:
        foreground = volume[volume > volume.min()]
        if foreground.size:
            mask |= volume > 0.1 * np.percentile(foreground, 99)
    mask = ndimage.binary_opening(mask, iterations=1)
    return ndimage.binary_fill_holes(mask)


def normalisation_range(volume: np.ndarray, mask: np.ndarray, cfg: SliceConfig) -> tuple[float, float]:
    if cfg.normalisation == "minmax":
        return float(volume.min()), float(volume.max())
    if cfg.normalisation == "percentile":
        brain = volume[mask]
        return float(np.percentile(brain, cfg.lower_percentile)), float(np.percentile(brain, cfg.upper_percentile))
    raise ValueError(f"slices.normalisation {cfg.normalisation!r} unknown; choose minmax or percentile")


def normalise(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((volume - low) / max(high - low, 1e-8), 0.0, 1.0)


def slice_range(mask: np.ndarray, n_slices: int, path: Path) -> tuple[int, int]:
    """First and last z (inclusive) of the K slices centred on the brain's axial extent."""
    depth = mask.shape[2]
    if n_slices > depth:
        raise InputError(f"{path}: {n_slices} slices asked for, the volume has {depth} axial slices")
    occupied = np.flatnonzero(mask.any(axis=(0, 1)))
    centre = (occupied[0] + occupied[-1] + 1) // 2
    first = int(np.clip(centre - n_slices // 2, 0, depth - n_slices))
    return first, first + n_slices - 1


def brain_extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and the columns (in-plane axes 0 and 1) that hold brain in any slice."""
    return np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(mask.any(axis=(0, 2)))


def centred_start(occupied: np.ndarray, size: int) -> int:
    """First index (may be negative: padding) of a window of `size` centred on the occupied indices."""
    return int((occupied[0] + occupied[-1] + 1) // 2 - size // 2)


def crop_window(mask: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner (may be negative: padding) of the S x S window centred on the brain."""
    rows, cols = brain_extent(mask)
    return centred_start(rows, size), centred_start(cols, size)


def tile_corners(mask: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Corners of S x S windows covering the brain: `crop_window`'s one window when the brain fits in it, else
    windows overlapping by at least half a window that tile the brain's extent."""
    def starts(occupied: np.ndarray) -> list[int]:
        first, last = int(occupied[0]), int(occupied[-1])
        if last - first + 1 <= size:
            return [centred_start(occupied, size)]
        count = int(np.ceil((last + 1 - size - first) / (size // 2))) + 1
        return np.linspace(first, last + 1 - size, count).round().astype(int).tolist()

    rows, cols = brain_extent(mask)
    return [(x0, y0) for x0 in starts(rows) for y0 in starts(cols)]


def crop_pad(volume: np.ndarray, corner: tuple[int, int], size: int) -> np.ndarray:
    """volume[x0:x0+S, y0:y0+S, :] with zeros where the window leaves the volume."""
    out = np.zeros((size, size) + volume.shape[2:], volume.dtype)
    x0, y0 = corner
    sx, sy = slice(max(x0, 0), min(x0 + size, volume.shape[0])), slice(max(y0, 0), min(y0 + size, volume.shape[1]))
    out[sx.start - x0: sx.stop - x0, sy.start - y0: sy.stop - y0] = volume[sx, sy]
    return out


def load_subject(files: dict[str, Path], grid_hint: str = REGISTRATION_HINT, spacing: list[float] | None = None):
    """{contrast: path} -> ({contrast: volume on the working grid}, {contrast: NIfTI image}, brain mask); every
    volume must share the first one's voxel grid. The store's slicing and `codebrain impute` both start here."""
    first = next(iter(files))
    volumes, images = {}, {}
    for contrast, path in files.items():
        data, image = load_volume(path)
        if images:
            check_same_grid(images[first], image, path, files[first], grid_hint)
        volumes[contrast], images[contrast] = to_working_grid(data, image, spacing), image
    mask = brain_mask(list(volumes.values()))
    if not mask.any():
        raise InputError(f"{files[first]}: empty brain mask (the volume has no foreground)")
    return volumes, images, mask


def cut_slices(volumes: dict[str, np.ndarray], files: dict[str, Path], mask: np.ndarray, z: np.ndarray, size: int,
               cfg: SliceConfig, corner: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, list[tuple[float, float]], tuple[int, int]]:
    """Axial slices z of each volume, normalised to [0, 1] and cropped to size x size (around the brain, or at
    `corner`): (K x N x S x S float32, each contrast's (low, high) intensity range, the crop's corner)."""
    corner = crop_window(mask[:, :, z], size) if corner is None else corner
    stack, ranges = [], []
    for contrast, volume in volumes.items():
        low, high = normalisation_range(volume, mask, cfg)
        if high <= low:
            raise InputError(f"{files[contrast]}: constant intensity {low}, cannot normalise")
        ranges.append((low, high))
        stack.append(crop_pad(normalise(volume[:, :, z], low, high), corner, size))
    return np.stack(stack).transpose(3, 0, 1, 2), ranges, corner  # N x S x S x K -> K x N x S x S


def extract_subject(subject: str, files: dict[str, Path], contrasts: list[str], cfg: SliceConfig,
                    out_file: Path, z_range: tuple[int, int] | None = None, labels: Path | None = None) -> dict:
    """Slices of one subject -> npz (slices K x N x S x S, z, normalisation, crop)."""
    files = {contrast: files[contrast] for contrast in contrasts}
    volumes, images, mask = load_subject(files, spacing=cfg.spacing)
    first_file, reference = files[contrasts[0]], images[contrasts[0]]
    if cfg.train_extent not in ("middle", "brain"):
        raise InputError(f"slices.train_extent {cfg.train_extent!r} unknown; choose middle or brain")
    whole_extent = z_range is None and cfg.train_extent == "brain"
    if z_range is None:
        z_range = slice_range(mask, cfg.n_slices, first_file)
    first, last = z_range
    if first < 0 or last >= mask.shape[2]:
        raise InputError(f"{first_file}: slices {first}..{last} asked for, the volume has {mask.shape[2]} axial slices")
    corner = crop_window(mask[:, :, first: last + 1], cfg.size)  # the middle slices' window, for every slice
    z = np.arange(first, last + 1)
    if whole_extent:  # every slice with brain (and the middle K, should the brain be thinner)
        occupied = np.flatnonzero(mask.any(axis=(0, 1)))
        z = np.arange(min(first, occupied[0]), max(last, occupied[-1]) + 1)
    slices, ranges, corner = cut_slices(volumes, files, mask, z, cfg.size, cfg, corner)
    arrays = {"slices": slices.astype(cfg.dtype), "z": z, "middle": np.array([first, last]),
              "normalisation": np.array(ranges),
              "corner": np.array(corner), "volume_shape": np.array(mask.shape),
              "voxel_size": np.array(grid_voxel_size(reference, cfg.spacing))}
    if labels is not None:
        label_data, label_image = load_volume(labels)
        check_same_grid(reference, label_image, labels, first_file)
        label_data = brats_labels(label_data, labels)
        label_slices = crop_pad(to_working_grid(label_data, label_image, cfg.spacing, order=0)[:, :, z], corner, cfg.size)
        arrays["labels"] = label_slices.transpose(2, 0, 1).astype(np.uint8)  # K x S x S
    with write_atomic(out_file) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return {"subject": subject, "first_slice": int(first), "last_slice": int(last), "corner": corner}


def slice_config(section: dict) -> SliceConfig:
    """SliceConfig from the config's `slices` section (or a store's record of it)."""
    return SliceConfig.model_validate(section)
