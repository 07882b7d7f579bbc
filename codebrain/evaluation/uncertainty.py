"""Uncertainty with every imputation: images decoded from codes drawn from E_prior's own level distributions,
and how well their spread predicts the real error.

E_prior predicts, per code position and dimension, a distribution over the L levels (grading:
P(level > j) per ordinal bit, made monotone and differenced; CE: a softmax). `sample_imputations`
draws K code maps from it, decodes each with the same common features F_c, and returns the
hard-decoded image (the paper's output, the median level per dimension), the mean of the K
images and their per-voxel standard deviation. E_prior and E_s run once; D_a K + 1 times.
Only FSQ codes (levels per dimension) are sampled: VQ indices and the continuous ablation are refused.

`calibration` compares that standard deviation with the absolute error inside the brain.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from codebrain.models.grading import sample_levels


def samplable(stage1) -> bool:
    """Whether the model's codes are levels per dimension (FSQ), which E_prior gives distributions over."""
    return stage1.quantiser.level_counts is not None


def check_samplable(stage1) -> None:
    if not samplable(stage1):
        raise ValueError(f"model.quantiser {stage1.cfg.quantiser}: uncertainty samples need FSQ levels per code "
                         f"dimension")


def prior_outputs(stage1, prior, image: torch.Tensor, available: np.ndarray):
    """(M_s, F_c = E_s(M_s), E_prior's logits) for the contrasts `available` of image (B x N x S x S)."""
    mask = torch.from_numpy(available).to(image.device)
    masked = image * mask[None, :, None, None]  # M_s
    return masked, stage1.common_features(masked), prior(masked, mask[None].expand(len(image), -1))


@torch.no_grad()
def sample_imputations(stage1, prior, image: torch.Tensor, available: np.ndarray, samples: int = 8,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """image B x N x S x S -> {"hard", "mean", "std"}: each B x N x S x S, the missing channels imputed (clamped
    to [0, 1] like every output) and the given ones kept (their std is 0)."""
    check_samplable(stage1)
    masked, common, logits = prior_outputs(stage1, prior, image, available)  # E_s and E_prior, once
    hard_codes = prior.predict(logits)
    generator = torch.Generator(device=image.device).manual_seed(seed)
    drawn = sample_levels(prior.distribution(logits), samples, generator)  # K x B x maps x d x h x w
    hard, mean, std = masked.clone(), masked.clone(), torch.zeros_like(image)
    for t in np.flatnonzero(~available):
        hard[:, t] = stage1.decode_code(hard_codes, common, int(t), prior.decoder).clamp(0, 1)
        decoded = torch.stack([stage1.decode_code(codes, common, int(t), prior.decoder).clamp(0, 1) for codes in drawn])
        mean[:, t], std[:, t] = decoded.mean(0), decoded.std(0, unbiased=False)
    return {"hard": hard, "mean": mean, "std": std}


def calibration(std: np.ndarray, error: np.ndarray, bins: int = 10) -> dict:
    """Voxel std against absolute error (both inside the brain, flat): Spearman's rho, the mean error of the
    top-decile-std voxels over that of the rest, and a reliability curve (mean error per std decile)."""
    rho = spearmanr(std, error).statistic if np.ptp(std) > 0 and np.ptp(error) > 0 else float("nan")
    top = std >= np.quantile(std, 0.9)
    rest_error = error[~top].mean() if (~top).any() else float("nan")
    edges = np.unique(np.quantile(std, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, len(edges) - 2)
    curve = [(float(std[which == b].mean()), float(error[which == b].mean())) for b in range(len(edges) - 1)
             if (which == b).any()]
    return {"spearman": float(rho), "top_decile_error_ratio": float(error[top].mean() / rest_error),
            "mean_std": float(std.mean()), "mean_error": float(error.mean()), "reliability": curve}


def evaluate_uncertainty(stage1, prior, slices, contrasts: list[str], device, samples: int = 8,
                         batch_size: int = 32, labels=None, max_voxels: int = 200_000, seed: int = 0) -> pd.DataFrame:
    """Per (scenario, target): `calibration` of the std of `samples` draws against the hard imputation's absolute
    error, over brain voxels (at most max_voxels, drawn with a fixed seed), and with labels the mean std inside
    the tumour and in the rest of the brain."""
    from codebrain.evaluation.scenarios import all_scenarios, brain_masks, scenario_name

    collected = {}
    for start in range(0, len(slices), batch_size):
        block = np.array(slices[start: start + batch_size], dtype=np.float32)
        image, brain = torch.from_numpy(block).to(device), brain_masks(block)
        tumour = np.asarray(labels[start: start + batch_size]) > 0 if labels is not None else None
        for available in all_scenarios(len(contrasts)):
            result = sample_imputations(stage1, prior, image, available, samples, seed + start)
            for t in np.flatnonzero(~available):
                std = result["std"][:, t].cpu().numpy()
                error = np.abs(result["hard"][:, t].cpu().numpy() - block[:, t])
                parts = collected.setdefault((scenario_name(available), contrasts[t], int(available.sum())),
                                             {"std": [], "error": [], "tumour": []})
                parts["std"].append(std[brain])
                parts["error"].append(error[brain])
                if tumour is not None:
                    parts["tumour"].append(tumour[brain])
    rng = np.random.default_rng(seed)
    rows = []
    for (scenario, target, n_inputs), parts in collected.items():
        std, error = np.concatenate(parts["std"]), np.concatenate(parts["error"])
        keep = rng.permutation(len(std))[:max_voxels]
        report = calibration(std[keep], error[keep])
        row = {"scenario": scenario, "target": target, "n_inputs": n_inputs,
               **{k: v for k, v in report.items() if k != "reliability"},
               "reliability": ";".join(f"{s:.5f}:{e:.5f}" for s, e in report["reliability"])}
        if parts["tumour"]:
            tumour = np.concatenate(parts["tumour"])
            row.update(std_tumour=float(std[tumour].mean()) if tumour.any() else float("nan"),
                       std_healthy=float(std[~tumour].mean()))
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["n_inputs", "scenario", "target"], kind="stable")


def uncertainty_figure(table: pd.DataFrame, stage1, prior, slices, contrasts, path, index: int,
                       samples: int = 8) -> None:
    """Left: error against std (reliability, std deciles) per target, for the scenarios missing one contrast.
    Right: for one slice and each such scenario, the truth, the imputation, its |error| and its std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from codebrain.evaluation.scenarios import all_scenarios
    from codebrain.io import write_atomic

    one_missing = [a for a in all_scenarios(len(contrasts)) if a.sum() == len(contrasts) - 1]
    fig, axes = plt.subplots(len(one_missing), 5, figsize=(13, 2.6 * len(one_missing)), squeeze=False)
    image = torch.from_numpy(np.array(slices[index: index + 1], dtype=np.float32)).to(
        next(stage1.parameters()).device)
    for row, available in zip(axes, one_missing):
        t = int(np.flatnonzero(~available)[0])
        curve = table[(table.target == contrasts[t]) & (table.n_inputs == len(contrasts) - 1)].reliability.iloc[0]
        points = np.array([[float(v) for v in pair.split(":")] for pair in curve.split(";")])
        row[0].plot(points[:, 0], points[:, 1], "o-")
        row[0].set_xlabel("std (decile mean)")
        row[0].set_ylabel(f"|error|, {contrasts[t]} missing")
        result = sample_imputations(stage1, prior, image, available, samples)
        truth = image[0, t].cpu().numpy()
        hard, std = result["hard"][0, t].cpu().numpy(), result["std"][0, t].cpu().numpy()
        panels = [(truth, f"{contrasts[t]} (truth)", "gray", 1), (hard, "imputed", "gray", 1),
                  (np.abs(hard - truth), "|error|", "magma", 0.3), (std, "std", "magma", 0.15)]
        for axis, (data, title, cmap, vmax) in zip(row[1:], panels):
            axis.imshow(data.T, cmap=cmap, vmin=0, vmax=vmax, origin="lower")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    fig.tight_layout()
    with write_atomic(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
