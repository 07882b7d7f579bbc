"""Stage I code cache: E_posterior's integer codes for every slice and contrast, so Stage II never reruns it.

Per split: {split}.npy, slices x n_code_maps x code_channels x h x w in the quantiser's code_dtype
(uint8 FSQ levels, VQ indices, float16 for the continuous ablation), and codes.json with the
quantiser's usage statistics: how many codes occur, perplexity, the level histogram of each dimension.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from codebrain.rebuild import load_stage1
from codebrain.data.dataset import open_store
from codebrain.io import default_device, write_atomic


@torch.no_grad()
def cache_codes(checkpoint: Path, store: Path, out_dir: Path, contrasts: list[str], splits=("train", "val"),
                batch_size: int = 64, device: str | None = None) -> dict:
    """Refused when the store, the Stage I checkpoint or `contrasts` disagree on the contrasts."""
    device = device or default_device()
    _, summary = open_store(store, splits[0], contrasts)
    model, _ = load_stage1(checkpoint, contrasts)
    model.to(device)
    cfg = model.cfg
    report = {"contrasts": cfg.contrasts, "code_shape": None, "splits": {}}
    for split in splits:
        slices, _ = open_store(store, split, cfg.contrasts)
        h = summary["size"] // cfg.downsampling
        shape = (len(slices), cfg.n_code_maps, model.quantiser.code_channels, h, h)
        with write_atomic(out_dir / f"{split}.npy") as tmp:
            codes = np.lib.format.open_memmap(tmp, mode="w+", dtype=model.quantiser.code_dtype, shape=shape)
            for start in tqdm(range(0, len(slices), batch_size), desc=f"cache_codes {split}", unit="batch"):
                image = torch.from_numpy(np.array(slices[start: start + batch_size])).to(device).float()
                codes[start: start + len(image)] = model.encode(image).cpu().numpy()
            codes.flush()
            report["splits"][split] = {"slices": len(slices), **model.quantiser.usage(np.asarray(codes))}
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
