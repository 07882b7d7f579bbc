"""Every missing-contrast scenario, and PSNR per (scenario, target) for Stage I, Stage II and zero filling.

A scenario is the set of available contrasts, named as a bit string in contrast order ("010" =
only the second given). The protocol (DESIGN.md): outputs clamped to [0, 1], PSNR per slice
with data range 1, mean over slices per (scenario, target) pair, then an unweighted mean over
pairs; model selection uses the one-missing scenarios.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import pandas as pd
import torch

from codebrain.evaluation.metrics import slice_metrics


def all_scenarios(n_contrasts: int) -> list[np.ndarray]:
    """Every non-empty proper subset of available contrasts (2^N - 2), fewest inputs first."""
    masks = [np.array(bits, bool) for bits in itertools.product([False, True], repeat=n_contrasts)]
    masks = [m for m in masks if 0 < m.sum() < n_contrasts]
    return sorted(masks, key=lambda m: (m.sum(), scenario_name(m)))


def scenario_name(available) -> str:
    return "".join("1" if a else "0" for a in available)


def brain_masks(image: np.ndarray) -> np.ndarray:
    """B x N x S x S -> B x S x S: each slice's brain, from all its true contrasts (slices.brain_mask)."""
    from codebrain.data.slices import brain_mask

    return np.stack([brain_mask(list(stack)) for stack in image])


@torch.no_grad()
def evaluate_scenarios(stage1, slices, contrasts: list[str], device, batch_size: int = 64, prior=None,
                       max_slices: int | None = None, brain: bool = False) -> pd.DataFrame:
    """Rows (scenario, target, n_inputs, method, psnr, ssim, mae[, *_brain], code_accuracy): means over slices.

    methods: stage1 = D_a from the target's true code (reconstruction), stage2 = from E_prior's
    predicted code (imputation, when a prior is given), zero = the missing contrast left at 0.
    """
    stage1.eval()
    if prior is not None:
        prior.eval()
    joint = stage1.cfg.joint_code
    sums = defaultdict(float)
    counts = defaultdict(int)
    n = len(slices) if max_slices is None else min(len(slices), max_slices)
    for start in range(0, n, batch_size):
        block = np.array(slices[start: min(n, start + batch_size)], dtype=np.float32)
        image = torch.from_numpy(block).to(device)
        masks = torch.from_numpy(brain_masks(block)).to(device) if brain else None
        true_codes = stage1.encode(image)  # B x n_code_maps x d' x h x w
        for available in all_scenarios(len(contrasts)):
            mask = torch.from_numpy(available).to(device)
            masked = image * mask[None, :, None, None]
            common = stage1.common_features(masked)
            predicted = prior.predict(prior(masked)) if prior is not None else None
            for t in np.flatnonzero(~available):
                code_map, channel = (0, int(t)) if joint else (int(t), 0)
                key = (scenario_name(available), contrasts[t], int(available.sum()))
                target = image[:, t]
                outputs = {"zero": torch.zeros_like(target)}
                latent = stage1.quantiser.codes_to_latent(true_codes[:, code_map])
                outputs["stage1"] = stage1.decoder(latent, common)[:, channel]
                if predicted is not None:
                    latent = stage1.quantiser.codes_to_latent(predicted[:, code_map])
                    outputs["stage2"] = stage1.decoder(latent, common)[:, channel]
                    if predicted.dtype != torch.float32:
                        hits = (predicted[:, code_map] == true_codes[:, code_map]).float().flatten(1).mean(1)
                        sums[key + ("stage2", "code_accuracy")] += hits.sum().item()
                for method, output in outputs.items():
                    values = slice_metrics(output, target)
                    if brain:
                        values.update({f"{k}_brain": v for k, v in slice_metrics(output, target, masks).items()})
                    for metric, per_slice in values.items():
                        sums[key + (method, metric)] += per_slice.sum().item()
                    counts[key + (method,)] += len(target)
    rows = []
    for key, count in counts.items():
        row = dict(zip(("scenario", "target", "n_inputs", "method"), key))
        row.update({metric: total / count for (*k, metric), total in sums.items() if tuple(k) == key})
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> dict[str, float]:
    """Unweighted means over (scenario, target) pairs per method: all pairs and the one-missing ones."""
    n_contrasts = len(table.scenario.iloc[0])
    summary = {}
    for method, rows in table.groupby("method"):
        summary[f"psnr_{method}"] = rows.psnr.mean()
        summary[f"psnr_{method}_one_missing"] = rows[rows.n_inputs == n_contrasts - 1].psnr.mean()
        if "code_accuracy" in rows and rows.code_accuracy.notna().any():
            summary["code_accuracy"] = rows.code_accuracy.mean()
            for target, per_target in rows.groupby("target"):
                summary[f"code_accuracy_{target}"] = per_target.code_accuracy.mean()
    return {k: float(v) for k, v in summary.items()}
