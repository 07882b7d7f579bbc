"""Training-time augmentation of a slice stack, as the authors' release has it (utils/dataset.py, kornia).

One geometric transform per sample, drawn from its own generator and applied alike to all N contrasts, so the
stack stays aligned. Each listed kind is applied with probability 1/2, in the order listed (the release's:
elastic, flip, vflip, rot90, affine). Intensities are left alone: the normalisation is part of the data, not of
the augmentation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

KINDS = ("elastic", "flip", "vflip", "rot90", "affine")  # the release's order
# affine: +-15 degrees, 0.9-1.1x, +-10 % of the size; elastic: kornia's kernel 63, sigma 32, alpha 1 at 256 px,
# kept as fractions of the size
MAX_ROTATION_DEG, SCALE_RANGE, MAX_SHIFT = 15.0, 0.1, 0.1
ELASTIC_SIGMA, ELASTIC_RADIUS, ELASTIC_ALPHA = 32 / 256, 31 / 256, 1.0


def affine_params(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(2 x 2 matrix, offset) mapping output pixel coordinates to input ones: rotation and scale about the centre,
    then a shift."""
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    scale = rng.uniform(1 - SCALE_RANGE, 1 + SCALE_RANGE)
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = np.array([(size - 1) / 2] * 2)
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2) * size
    return matrix, centre - matrix @ centre + shift


def elastic_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """2 x S x S displacement (pixels), kornia's: uniform noise in [-1, 1], Gaussian-smoothed (sigma and kernel
    radius as fractions of the size), times alpha in the normalised [-1, 1] grid, so (S - 1) / 2 pixels per unit."""
    sigma = ELASTIC_SIGMA * size
    noise = rng.uniform(-1, 1, (2, size, size))
    field = np.stack([ndimage.gaussian_filter(n, sigma, truncate=ELASTIC_RADIUS / ELASTIC_SIGMA, mode="mirror")
                      for n in noise])
    return field * ELASTIC_ALPHA * (size - 1) / 2


def check_kinds(kinds: list[str]) -> None:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"augment: unknown kinds {sorted(unknown)} (known: {', '.join(KINDS)})")


def transform(out: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One kind applied to an N x S x S stack."""
    size = out.shape[-1]
    if kind == "flip":
        return out[:, :, ::-1]
    if kind == "vflip":
        return out[:, ::-1]
    if kind == "rot90":
        return np.rot90(out, int(rng.integers(1, 4)), axes=(1, 2))
    if kind == "affine":
        matrix, offset = affine_params(rng, size)
        return np.stack([ndimage.affine_transform(c, matrix, offset, order=1, mode="constant") for c in out])
    grid = np.mgrid[:size, :size].astype(np.float64) + elastic_field(rng, size)  # elastic
    return np.stack([ndimage.map_coordinates(c, grid, order=1, mode="constant") for c in out])


def augment(image: np.ndarray, rng: np.random.Generator, kinds: list[str]) -> np.ndarray:
    """image N x S x S (float) -> the same stack under one random transform built from `kinds`, in their order."""
    out = image
    for kind in kinds:
        if rng.random() < 0.5:
            out = transform(out, kind, rng)
    return np.ascontiguousarray(out)
