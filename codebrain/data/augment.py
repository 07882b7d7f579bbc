"""Training-time augmentation of a slice stack (the authors' release: flips, rot90, affine, elastic).

One geometric transform per sample, drawn from its own generator and applied alike to all N
contrasts, so the stack stays aligned; each kind is applied with probability 1/2. Intensities are
left alone: the normalisation is part of the data, not of the augmentation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

KINDS = ("flip", "rot90", "affine", "elastic")
MAX_ROTATION_DEG, SCALE_RANGE, MAX_SHIFT = 10.0, 0.1, 0.05  # affine: +-10 degrees, 0.9-1.1x, +-5 % of the size
ELASTIC_ALPHA, ELASTIC_SIGMA = 0.03, 0.08  # displacement amplitude and smoothness, as fractions of the size


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
    """2 x S x S smooth random displacement (pixels)."""
    noise = rng.uniform(-1, 1, (2, size, size))
    field = np.stack([ndimage.gaussian_filter(n, ELASTIC_SIGMA * size) for n in noise])
    return field / (np.abs(field).max() + 1e-8) * ELASTIC_ALPHA * size


def check_kinds(kinds: list[str]) -> None:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"augment: unknown kinds {sorted(unknown)} (known: {', '.join(KINDS)})")


def augment(image: np.ndarray, rng: np.random.Generator, kinds: list[str]) -> np.ndarray:
    """image N x S x S (float) -> the same stack under one random transform built from `kinds`."""
    size = image.shape[-1]
    out = image
    if "flip" in kinds and rng.random() < 0.5:
        out = out[:, :, ::-1]
    if "rot90" in kinds and rng.random() < 0.5:
        out = np.rot90(out, int(rng.integers(1, 4)), axes=(1, 2))
    if "affine" in kinds and rng.random() < 0.5:
        matrix, offset = affine_params(rng, size)
        out = np.stack([ndimage.affine_transform(c, matrix, offset, order=1, mode="constant") for c in out])
    if "elastic" in kinds and rng.random() < 0.5:
        grid = np.mgrid[:size, :size].astype(np.float64) + elastic_field(rng, size)
        out = np.stack([ndimage.map_coordinates(c, grid, order=1, mode="constant") for c in out])
    return np.ascontiguousarray(out)
