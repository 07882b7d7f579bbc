"""Stage I code cache: E_posterior's integer codes for every slice and contrast, so Stage II never reruns it.

Per split: {split}.npy, slices x n_code_maps x d x h x w (uint8 FSQ levels; uint8/uint16 VQ
indices; float16 for the continuous ablation), and codes.json with code usage: how many of
the prod(L_i) codes occur, perplexity, and the level histogram of each dimension.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from codebrain.data.dataset import open_store
from codebrain.data.nifti import write_atomic
from codebrain.models.config import ModelConfig
from codebrain.models.fsq import FSQ
from codebrain.models.reconstructor import Reconstructor
from codebrain.training.checkpoints import load_checkpoint


def load_stage1(checkpoint: str | Path, contrasts: list[str] | None = None) -> tuple[Reconstructor, dict]:
    """Stage I rebuilt from its checkpoint's own model_config (refused if trained on other contrasts)."""
    payload = load_checkpoint(checkpoint, "stage1", {"contrasts": list(contrasts)} if contrasts else None)
    model = Reconstructor(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["model"])
    return model.eval(), payload


def code_dtype(cfg: ModelConfig):
    if cfg.quantiser == "continuous":
        return np.float16
    if cfg.quantiser == "vq":
        return np.uint8 if cfg.codebook_size <= 256 else np.uint16
    return np.uint8


def code_usage(codes: np.ndarray, quantiser) -> dict:
    """Codes used of the codebook, perplexity, per-dimension level histograms (FSQ) for one split."""
    if isinstance(quantiser, FSQ):
        levels = torch.from_numpy(codes.reshape(-1, *codes.shape[2:]))  # (slices maps) x d x h x w
        indices = quantiser.levels_to_indices(levels).flatten().numpy()
        histograms = [np.bincount(codes[:, :, i].ravel(), minlength=n).tolist()
                      for i, n in enumerate(quantiser.levels_list)]
    elif codes.dtype.kind in "ui":  # VQ: one index per position
        indices, histograms = codes.ravel().astype(np.int64), []
    else:
        return {}
    counts = np.bincount(indices)
    p = counts[counts > 0] / counts.sum()
    size = quantiser.codebook_size
    return {"codes_used": int((counts > 0).sum()), "codebook_size": int(size),
            "codes_used_fraction": float((counts > 0).sum() / size), "perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "level_histograms": histograms}


@torch.no_grad()
def cache_codes(checkpoint: Path, store: Path, out_dir: Path, splits=("train", "val"), batch_size: int = 64,
                device: str | None = None) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    _, summary = open_store(store, splits[0])
    model, _ = load_stage1(checkpoint, summary["contrasts"])
    model.to(device)
    cfg = model.cfg
    report = {"contrasts": cfg.contrasts, "code_shape": None, "splits": {}}
    for split in splits:
        slices, _ = open_store(store, split, cfg.contrasts)
        h = summary["size"] // cfg.downsampling
        shape = (len(slices), cfg.n_code_maps, 1 if cfg.quantiser == "vq" else cfg.code_dim, h, h)
        with write_atomic(out_dir / f"{split}.npy") as tmp:
            codes = np.lib.format.open_memmap(tmp, mode="w+", dtype=code_dtype(cfg), shape=shape)
            for start in tqdm(range(0, len(slices), batch_size), desc=f"cache_codes {split}", unit="batch"):
                image = torch.from_numpy(np.array(slices[start: start + batch_size])).to(device).float()
                codes[start: start + len(image)] = model.encode(image).cpu().numpy()
            codes.flush()
            report["splits"][split] = {"slices": len(slices), **code_usage(np.asarray(codes), model.quantiser)}
            del codes
        report["code_shape"] = list(shape[1:])
    with write_atomic(out_dir / "codes.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    return report


def plot_level_histograms(report: dict, path: Path) -> None:
    """Bar chart of each code dimension's level histogram (train split): a dead level or dimension shows at once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histograms = report["splits"]["train"].get("level_histograms") or []
    if not histograms:
        return
    fig, axes = plt.subplots(1, len(histograms), figsize=(1.6 * len(histograms), 2.2), sharey=True)
    for i, (ax, counts) in enumerate(zip(np.atleast_1d(axes), histograms)):
        counts = np.asarray(counts)
        ax.bar(range(len(counts)), counts / counts.sum())
        ax.set_title(f"dim {i}", fontsize=8)
        ax.set_xticks(range(len(counts)))
        ax.tick_params(labelsize=6)
    np.atleast_1d(axes)[0].set_ylabel("fraction of positions")
    fig.suptitle("Stage I code levels per dimension (train)", fontsize=9)
    fig.tight_layout()
    with write_atomic(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
