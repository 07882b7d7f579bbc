"""The BraTS synthesis challenge's (BraSyn) scores of whole volumes, beside the paper's 2D slice means.

BraSyn (hongweilibran/BraSyn, ssim.py) scores a synthesised volume against the true one after clipping each to its
own 0.5 and 99.5 percentiles (the lower one at least 0) and scaling it to [0, 1]. SSIM is torchmetrics' 3D one
(Gaussian 11 x 11 x 11, sigma 1.5, population covariance, reflect-padded, data range the larger of the two
volumes' ranges, as torchmetrics takes it when none is given) of both volumes masked to the tumour (seg > 0),
averaged over the tumour's voxels, and of both masked to the rest, averaged over the rest. PSNR (data range 1) is
over the brain. Here a subject's volume is its K middle slices at the store's resolution, so K must exceed the
window's half-width (5); with fewer slices (or a volume as thin on another axis), or no tumour, a score is NaN.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from codebrain.evaluation.metrics import gaussian_1d, ssim_index
from codebrain.evaluation.scenarios import all_scenarios, brain_masks, scenario_name

VOLUME_METRICS = ("ssim_tumour_3d", "ssim_outside_3d", "psnr_brain_3d")
HALF_WIDTH = 5  # the 11-voxel window's


def percentile_scaled(volume: torch.Tensor, low: float = 0.5, high: float = 99.5) -> torch.Tensor:
    """Clipped to its own [p_low, p_high] (p_low at least 0) and scaled to [0, 1]; a constant volume becomes 0."""
    v_min, v_max = np.percentile(volume.cpu().numpy(), [low, high])
    v_min = max(v_min, 0.0)
    if v_max <= v_min:
        return torch.zeros_like(volume)
    return (volume.clamp(v_min, v_max) - v_min) / (v_max - v_min)


def ssim3d_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Two D x H x W volumes -> their D x H x W local SSIM. The 11 x 11 x 11 Gaussian window is separable: three 1D
    passes, 33 products a voxel instead of 1,331, so a 1 mm volume scores in seconds."""
    g = gaussian_1d().to(x.device)
    passes = [g.view(1, 1, -1, 1, 1), g.view(1, 1, 1, -1, 1), g.view(1, 1, 1, 1, -1)]

    def local_mean(t):
        for kernel in passes:
            t = F.conv3d(t, kernel)
        return t

    data_range = max(float(x.max() - x.min()), float(y.max() - y.min()))
    x, y = (F.pad(v[None, None].float(), (HALF_WIDTH,) * 6, mode="reflect") for v in (x, y))
    return ssim_index(x, y, local_mean, data_range)[0, 0]


def volume_scores(truth: torch.Tensor, prediction: torch.Tensor, tumour: torch.Tensor | None,
                  brain: torch.Tensor) -> dict[str, float]:
    """BraSyn's SSIM (x 100, as the 2D SSIM) inside and outside the tumour and PSNR in the brain of one K x S x S
    volume pair."""
    truth, prediction = percentile_scaled(truth.float()), percentile_scaled(prediction.float())
    scores = dict.fromkeys(VOLUME_METRICS, float("nan"))
    if min(truth.shape) > HALF_WIDTH:  # reflect padding needs more voxels than the half-width, on every axis
        regions = {"ssim_outside_3d": ~tumour if tumour is not None else torch.ones_like(brain)}
        if tumour is not None:
            regions["ssim_tumour_3d"] = tumour
        for name, region in regions.items():
            if region.any():
                inside = region.to(truth.dtype)
                scores[name] = 100 * float(ssim3d_map(prediction * inside, truth * inside)[region].mean())
    if brain.any():
        mse = float(((prediction - truth)[brain] ** 2).mean())
        scores["psnr_brain_3d"] = 10 * np.log10(1 / max(mse, 1e-10))
    return scores


def grid_scores(truth: np.ndarray, prediction: np.ndarray, tumour: np.ndarray | None,
                brain: np.ndarray) -> dict[str, float]:
    """volume_scores of an imputed volume on its subject's own grid (impute_test_subjects' NIfTI), inside the
    bounding box of its non-zero voxels: a model trained on K middle slices imputes those planes only, and the
    zeros around them are not its prediction."""
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and imputation {prediction.shape} are on different grids")
    covered = np.nonzero(prediction)
    if not covered[0].size:
        return dict.fromkeys(VOLUME_METRICS, float("nan"))
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in covered)
    crop = [torch.from_numpy(np.ascontiguousarray(a[box])) if a is not None else None
            for a in (truth, prediction, tumour, brain)]
    return volume_scores(*crop)


@torch.no_grad()
def evaluate_volumes(imputer, slices, rows: pd.DataFrame, labels, contrasts: list[str], device,
                     batch_size: int = 64) -> pd.DataFrame:
    """Rows (scenario, target, n_inputs, method, *VOLUME_METRICS): means over subjects (NaN scores left out).
    rows: each slice's subject and z (the store's <split>.tsv, in store order); labels: the split's tumour labels,
    or None."""
    sums, counts = defaultdict(float), defaultdict(int)
    for _, subject_rows in rows.reset_index(drop=True).groupby("subject", sort=False):
        index = subject_rows.sort_values("z").index.to_numpy()  # the subject's slices, bottom to top
        image = torch.from_numpy(np.array(slices[index], dtype=np.float32)).to(device)  # K x N x S x S
        brain = torch.from_numpy(brain_masks(image.cpu().numpy())).to(device)
        tumour = torch.from_numpy(np.asarray(labels[index]) > 0).to(device) if labels is not None else None
        for available in all_scenarios(len(contrasts)):
            outputs = [imputer(batch, available)[0] for batch in image.split(batch_size)]
            methods = {method: torch.cat([o[method] for o in outputs]).clamp(0, 1) for method in outputs[0]}
            for t in np.flatnonzero(~available):
                for method, output in {"zero": torch.zeros_like(image), **methods}.items():
                    key = (scenario_name(available), contrasts[t], int(available.sum()), method)
                    for metric, value in volume_scores(image[:, t], output[:, t], tumour, brain).items():
                        if np.isfinite(value):
                            sums[key + (metric,)] += value
                            counts[key + (metric,)] += 1
    rows = {}
    for (*key, metric), total in sums.items():
        row = rows.setdefault(tuple(key), dict(zip(("scenario", "target", "n_inputs", "method"), key)))
        row[metric] = total / counts[(*key, metric)]
    return pd.DataFrame(list(rows.values()), columns=["scenario", "target", "n_inputs", "method", *VOLUME_METRICS])
