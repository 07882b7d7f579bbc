"""The Medical Segmentation Decathlon's Task01_BrainTumour, one subject at a time, into BraTS-named files.

Each subject is one 4D volume (channels FLAIR, T1w, T1gd, T2w: `LAYOUT_CONTRASTS["msd"]`) and a
label volume with the Decathlon's labels (1 oedema, 2 non-enhancing tumour, 3 enhancing tumour).
Splitting writes one 3D volume per contrast on the same grid and the labels in the BraTS 2023
convention (1 necrosis / non-enhancing core, 2 oedema, 3 enhancing), named as BraTS 2018-2021
subjects are (`layouts.msd_split_files`), so the rest of the DAG reads them as `brats`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from codebrain.data.layouts import LAYOUT_CONTRASTS, msd_split_files
from codebrain.data.nifti import save_volume
from codebrain.io import InputError

MSD_TO_BRATS_LABELS = np.array([0, 2, 1, 3], np.uint8)  # index: Decathlon label, value: BraTS 2023 label


def split_subject(image_path: Path, labels_path: Path | None, subject: str, contrasts: list[str],
                  out_root: Path) -> dict[str, Path]:
    """One 4D Decathlon volume (and its labels) -> {kind: written 3D file}."""
    image = nib.load(str(image_path))
    channels = LAYOUT_CONTRASTS["msd"]
    if image.ndim != 4 or image.shape[3] != len(channels):
        raise InputError(f"{image_path}: expected a 4D volume of {len(channels)} channels ({', '.join(channels)}), "
                         f"found shape {image.shape}")
    kinds = list(contrasts) + (["seg"] if labels_path else [])
    files = msd_split_files(out_root, subject, kinds)
    for contrast in contrasts:
        channel = np.asarray(image.dataobj[..., channels.index(contrast)], dtype=np.float32)
        save_volume(channel, image.affine, files[contrast])
    if labels_path:
        labels = nib.load(str(labels_path))
        data = np.asarray(labels.dataobj)
        if labels.shape[:3] != image.shape[:3] or not set(np.unique(data).tolist()) <= {0, 1, 2, 3}:
            raise InputError(f"{labels_path}: expected Decathlon labels 0..3 on the image's {image.shape[:3]} grid, "
                             f"found shape {labels.shape} and labels {sorted(np.unique(data).tolist())}")
        save_volume(MSD_TO_BRATS_LABELS[data.astype(int)], image.affine, files["seg"], dtype=np.uint8)
    return files
