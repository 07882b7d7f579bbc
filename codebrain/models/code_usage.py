"""How much of a codebook a set of codes uses: a collapsed or dead code shows here first (docs/design.md, "Quantisers")."""

from __future__ import annotations

import numpy as np


def index_usage(indices: np.ndarray, codebook_size: int) -> dict:
    """Code indices (any shape) -> codes used, their fraction of the codebook, perplexity."""
    counts = np.bincount(indices.ravel().astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return {"codes_used": int((counts > 0).sum()), "codebook_size": int(codebook_size),
            "codes_used_fraction": float((counts > 0).sum() / codebook_size),
            "perplexity": float(np.exp(-(p * np.log(p)).sum()))}
