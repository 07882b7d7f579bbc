"""Dataset lineage: the slice store's splits as MLflow dataset inputs of a run (the UI's Dataset column)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def store_dataset(store: str | Path, split: str):
    """One split of a slice store as an MLflow dataset (metadata only: the arrays stay on disk): named
    <dataset folder>/<split>, its digest from store.json, the split's slice table and array shape, its shape in
    the schema."""
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.types.schema import Schema, TensorSpec

    store = Path(store).resolve()
    array = np.load(store / f"{split}.npy", mmap_mode="r")  # N x C x S x S
    rows = store / f"{split}.tsv"  # (subject, z) of each slice
    digest = hashlib.sha256((store / "store.json").read_bytes() + (rows.read_bytes() if rows.exists() else b"")
                            + str((split, array.shape, array.dtype.str)).encode())
    return MetaDataset(LocalArtifactDatasetSource(str(store)), name=f"{store.parent.name}/{split}",
                       digest=digest.hexdigest()[:16], schema=Schema([TensorSpec(array.dtype, array.shape, split)]))


def log_store_input(store: str, splits: list[str], context: str) -> None:
    """The slice store's splits as dataset inputs of the active run, tagged with the split."""
    import mlflow

    for split in splits:
        mlflow.log_input(store_dataset(store, split), context=context, tags={"split": split})
