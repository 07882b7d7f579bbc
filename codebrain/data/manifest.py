"""The raw-data manifest: one row per subject and contrast, every file opened and checked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from codebrain.io import sha256sum
from codebrain.io import write_atomic
from codebrain.data.nifti import load_volume, voxel_sizes

COLUMNS = ["subject", "contrast", "path", "shape", "voxel_size", "sha256"]


def build_manifest(subjects: dict[str, dict[str, Path]], out_file: Path) -> pd.DataFrame:
    """Read every volume (clear errors for corrupt, 4D or NaN files) and write manifest.tsv."""
    rows = []
    items = [(s, c, p) for s, files in subjects.items() for c, p in files.items()]
    for subject, contrast, path in tqdm(items, desc="check_raw", unit="file"):
        data, image = load_volume(path)
        rows.append({
            "subject": subject, "contrast": contrast, "path": str(path),
            "shape": "x".join(map(str, data.shape)),
            "voxel_size": "x".join(f"{v:g}" for v in voxel_sizes(image)),
            "sha256": sha256sum(path),
        })
    manifest = pd.DataFrame(rows, columns=COLUMNS)
    with write_atomic(out_file) as tmp:
        manifest.to_csv(tmp, sep="\t", index=False)
    return manifest
