"""Training slices from the memory-mapped store, each with a random missing-contrast scenario.

A scenario (docs/design.md, "The method"): pick k in [1, N-1], mask k random contrasts, pick the anchor among the
masked ones. The draw (and the augmentation's, when on) depends only on (seed, epoch, index), so a
resumed run sees the same scenarios and transforms in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from codebrain.data.augment import augment, check_kinds
from codebrain.io import InputError


@dataclass(frozen=True)
class Scenario:
    available: np.ndarray  # bool [N]: True where the contrast is given to the model
    anchor: int  # index of the masked contrast that Stage I reconstructs


def sample_scenario(n_contrasts: int, rng: np.random.Generator) -> Scenario:
    if n_contrasts < 2:
        raise ValueError("a scenario needs at least 2 contrasts")
    n_masked = int(rng.integers(1, n_contrasts))  # k in [1, N-1]
    masked = rng.choice(n_contrasts, size=n_masked, replace=False)
    available = np.ones(n_contrasts, bool)
    available[masked] = False
    return Scenario(available=available, anchor=int(rng.choice(masked)))


def open_store(store_dir: str | Path, split: str, contrasts: list[str] | None = None):
    """(memory-mapped array slices x N x S x S, store summary); refuses a store of other contrasts."""
    store_dir = Path(store_dir)
    summary_file = store_dir / "store.json"
    if not summary_file.exists():
        raise InputError(f"{store_dir}: not a slice store (no store.json)")
    summary = json.loads(summary_file.read_text())
    if contrasts is not None and list(contrasts) != summary["contrasts"]:
        raise InputError(f"{store_dir}: store holds contrasts {summary['contrasts']}, expected {list(contrasts)}")
    if split not in summary["splits"]:
        raise InputError(f"{store_dir}: no split {split!r}; it has {sorted(summary['splits'])}")
    return np.load(store_dir / f"{split}.npy", mmap_mode="r"), summary


def split_labels(store_dir: str | Path, split: str) -> np.ndarray | None:
    """The split's tumour labels (memory-mapped, slices x S x S), or None for a store without them."""
    path = Path(store_dir) / f"{split}_labels.npy"
    return np.load(path, mmap_mode="r") if path.exists() else None


def subject_order(store_dir: str | Path, split: str) -> list[str]:
    """The split's subjects in a fixed seeded order, whatever the training seed: its first n are the subjects of a
    training on n, so smaller sets nest in larger ones (4 in 8 in 16) and every learner at a size sees the same."""
    subjects = sorted(pd.read_csv(Path(store_dir) / f"{split}.tsv", sep="\t")["subject"].unique())
    return [str(s) for s in np.random.default_rng(0).permutation(subjects)]


def subject_rows(store_dir: str | Path, split: str, n_subjects: int) -> np.ndarray:
    """Store rows of the split's first `n_subjects` subjects (subject_order)."""
    order = subject_order(store_dir, split)
    if n_subjects > len(order):
        raise InputError(f"subjects: {n_subjects} asked, but split {split!r} of {store_dir} has {len(order)} subjects")
    table = pd.read_csv(Path(store_dir) / f"{split}.tsv", sep="\t")
    return np.flatnonzero(table["subject"].isin(order[:n_subjects]).to_numpy())


def open_codes(codes_dir: str | Path, split: str, n_slices: int) -> np.ndarray:
    """The code cache of a split (memory-mapped), checked against the slice count of the store."""
    path = Path(codes_dir) / f"{split}.npy"
    if not path.exists():
        raise InputError(f"{path}: no cached codes for split {split!r} (run cache-codes)")
    codes = np.load(path, mmap_mode="r")
    if len(codes) != n_slices:
        raise InputError(f"{path}: {len(codes)} codes for {n_slices} slices: the cache is from another slice store")
    return codes


class SliceDataset(Dataset):
    """Items: image [N, S, S] in [0, 1], scenario_mask [N] bool (True = available), anchor int.

    Images keep the store's dtype (float16 by default): convert them on the training device
    (`batch["image"].to(device).float()`), where it is free; on the CPU the conversion alone
    would cap the loader near 3,000 slices/s (BENCHMARKS.md).
    """

    def __init__(self, store_dir, split: str, contrasts: list[str] | None = None, seed: int = 0,
                 codes_dir: str | Path | None = None, augment: list[str] | tuple = (), subjects: int | None = None):
        self.slices, self.summary = open_store(store_dir, split, contrasts)
        self.contrasts = self.summary["contrasts"]
        self.seed, self.epoch, self.augment = seed, 0, list(augment)
        check_kinds(self.augment)
        if self.augment and codes_dir is not None:
            raise ValueError("cached codes belong to the stored slices, not to augmented ones")
        self.codes = open_codes(codes_dir, split, len(self.slices)) if codes_dir is not None else None
        # store rows of the items: every row, or those of the split's first `subjects` subjects
        self.rows = np.arange(len(self.slices)) if subjects is None else subject_rows(store_dir, split, subjects)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def scenario(self, index: int) -> Scenario:
        return sample_scenario(len(self.contrasts), np.random.default_rng([self.seed, self.epoch, index]))

    def item(self, image: np.ndarray, index: int, codes: np.ndarray | None) -> dict:
        scenario = self.scenario(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index, 2])
            image = augment(image.astype(np.float32), rng, self.augment).astype(image.dtype)
        item = {"image": torch.from_numpy(image), "scenario_mask": torch.from_numpy(scenario.available),
                "anchor": scenario.anchor}
        if codes is not None:
            item["codes"] = torch.from_numpy(codes)  # n_code_maps x d' x h x w, Stage I's codes of every contrast
        return item

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A DataLoader batch in one memory-map read instead of one read per slice. A slice's scenario and transform
        follow its store row, so a subject subset sees them as the whole split does."""
        rows = self.rows[np.asarray(indices)]
        block = self.slices[rows]  # B x N x S x S, one copy
        codes = self.codes[rows] if self.codes is not None else [None] * len(rows)
        return [self.item(image, int(row), code) for image, row, code in zip(block, rows, codes)]
