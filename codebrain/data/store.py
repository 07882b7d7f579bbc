"""The slice store: subjects assigned to splits, and their extracted slices (data/slices.py) gathered per split.

Per split (`build_store`): one memory-mapped array slices x contrasts x S x S, a table of (subject, z) rows, and
the per-volume normalisation and geometry tables; store.json describes it all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from codebrain.data.slices import SliceConfig
from codebrain.io import InputError, write_atomic

SPLITS = ("train", "val", "test")


def assign_splits(subjects: list[str], fractions: dict[str, float], seed: int,
                  split_table: pd.DataFrame | None = None, pinned: dict[str, str] | None = None) -> dict[str, str]:
    """subject -> split: from the authors' table when given, else a seeded shuffle by fractions. `pinned` subjects
    (those present) keep their split and count towards its share, so a cohort that grows keeps its test subjects;
    without pins the shuffle is as before."""
    if split_table is not None:
        known = dict(zip(split_table["subject"], split_table["split"]))
        return {s: known[s] for s in subjects if s in known}
    pinned = {s: split for s, split in (pinned or {}).items() if s in subjects}
    order = list(np.random.default_rng(seed).permutation(sorted(set(subjects) - set(pinned))))
    total = sum(fractions.values())
    wanted = [s for s in SPLITS if fractions.get(s, 0.0) > 0]
    if len(subjects) < len(wanted):
        raise InputError(f"{len(subjects)} subjects are too few for splits {fractions}")
    # every split asked for gets at least one subject; train takes the rest
    counts = {s: max(1, int(round(len(subjects) * fractions[s] / total))) if s in wanted else 0 for s in SPLITS}
    for split in pinned.values():
        counts[split] -= 1
    counts["val"], counts["test"] = max(0, counts["val"]), max(0, counts["test"])
    counts["train"] = len(order) - counts["val"] - counts["test"]
    assignment, start = dict(pinned), 0
    for name in SPLITS:
        for subject in order[start: start + counts[name]]:
            assignment[str(subject)] = name
        start += counts[name]
    return assignment


def split_rows(npz, split: str) -> np.ndarray:
    """Indices of a subject's extracted slices that its split keeps: all for training, the middle K (the
    slices every split shares) for validation and test."""
    z = npz["z"]
    if split == "train" or "middle" not in npz:
        return np.arange(len(z))
    first, last = npz["middle"]
    return np.flatnonzero((z >= first) & (z <= last))


def build_store(subject_files: dict[str, Path], assignment: dict[str, str], contrasts: list[str],
                out_dir: Path, slicing: SliceConfig | None = None) -> dict:
    """Concatenate per-subject npz files into one memory-mapped array per split.

    store.json keeps the slicing config, so a model trained on the store can slice new scans the same way.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"contrasts": list(contrasts), "splits": {}, "slicing": (slicing or SliceConfig()).model_dump()}
    normalisation_rows, geometry_rows, voxel_sizes = [], [], []
    for split in SPLITS:
        subjects = sorted(s for s, name in assignment.items() if name == split)
        loaded = [(s, np.load(subject_files[s])) for s in subjects]
        kept = {s: split_rows(npz, split) for s, npz in loaded}
        total = sum(len(kept[s]) for s, _ in loaded)
        if total == 0:
            raise InputError(f"split {split!r} has no subjects (assignment of {len(assignment)} subjects)")
        first = loaded[0][1]
        size, dtype = first["slices"].shape[-1], first["slices"].dtype
        has_labels = all("labels" in npz for _, npz in loaded)
        rows = []
        with write_atomic(out_dir / f"{split}.npy") as tmp:
            store = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total, len(contrasts), size, size))
            label_store = np.zeros((total, size, size), np.uint8) if has_labels else None
            offset = 0
            for subject, npz in loaded:
                rows_kept = kept[subject]
                count = len(rows_kept)
                store[offset: offset + count] = npz["slices"][rows_kept]
                if has_labels:
                    label_store[offset: offset + count] = npz["labels"][rows_kept]
                rows += [{"subject": subject, "z": int(z)} for z in npz["z"][rows_kept]]
                for contrast, (low, high) in zip(contrasts, npz["normalisation"]):
                    normalisation_rows.append({"subject": subject, "contrast": contrast, "low": low, "high": high})
                x0, y0 = npz["corner"]
                voxel_sizes.append(npz["voxel_size"])
                geometry_rows.append({"subject": subject, "split": split, "x0": int(x0), "y0": int(y0),
                                      "shape": "x".join(map(str, npz["volume_shape"]))})
                offset += count
            store.flush()
            del store
        if has_labels:
            with write_atomic(out_dir / f"{split}_labels.npy") as tmp:
                np.save(tmp, label_store)
        with write_atomic(out_dir / f"{split}.tsv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, sep="\t", index_label="index")
        summary["splits"][split] = {"subjects": len(subjects), "slices": total, "labels": has_labels}
    # what a model trained on the store needs to slice a new scan alike: crop size, orientation, voxel size
    summary.update(size=int(size), dtype=str(dtype), orientation="RAS",
                   voxel_size=[round(float(v), 4) for v in np.median(voxel_sizes, axis=0)])
    with write_atomic(out_dir / "normalisation.tsv") as tmp:
        pd.DataFrame(normalisation_rows).to_csv(tmp, sep="\t", index=False)
    with write_atomic(out_dir / "geometry.tsv") as tmp:
        pd.DataFrame(geometry_rows).to_csv(tmp, sep="\t", index=False)
    with write_atomic(out_dir / "store.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary
