"""Every missing-contrast scenario, and PSNR per (scenario, target) for Stage I, Stage II and zero filling.

A scenario is the set of available contrasts, named as a bit string in contrast order ("010" =
only the second given). The protocol (docs/design.md, "Evaluation"): outputs clamped to [0, 1], PSNR per slice
with data range 1, mean over slices per (scenario, target) pair, then an unweighted mean over
pairs; model selection uses the one-missing scenarios. An imputer is any callable that fills
the missing channels of a batch for a scenario: CodeBrain's two stages or a baseline.
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


CODE_METRICS = ("code_accuracy", "code_accuracy_brain", "whole_code_accuracy_brain", "level_error_brain")


def code_diagnostics(predicted: torch.Tensor, true: torch.Tensor, brain: torch.Tensor, levels: bool) -> dict:
    """Per slice, E_prior's code map against Stage I's (both B x d' x h x w): the fraction of code entries right
    (everywhere, as the paper counts, and inside the brain, where the prior has something to predict), the
    fraction of brain positions with all d' entries right (the whole code), and, for level codes (FSQ), the
    mean absolute level error inside the brain. brain: B x h x w; a slice without brain gets NaN there."""
    hits = (predicted == true).float()  # B x d' x h x w
    inside = brain[:, None].float()
    positions = brain.flatten(1).sum(1).float()
    entries = positions * true.shape[1]
    metrics = {"code_accuracy": hits.flatten(1).mean(1),
               "code_accuracy_brain": (hits * inside).flatten(1).sum(1) / entries,
               "whole_code_accuracy_brain": (hits.amin(1) * brain).flatten(1).sum(1) / positions}
    if levels:
        error = (predicted.float() - true.float()).abs()
        metrics["level_error_brain"] = (error * inside).flatten(1).sum(1) / entries
    return metrics


def code_brain(image: torch.Tensor, code_size: int) -> torch.Tensor:
    """B x N x S x S -> B x h x w: code positions more than half of whose pixels are brain (brain_masks)."""
    pixels = torch.from_numpy(brain_masks(image.cpu().numpy())).to(image.device, torch.float32)
    return torch.nn.functional.adaptive_avg_pool2d(pixels[:, None], code_size)[:, 0] > 0.5


class CodeBrainImputer:
    """Stage I reconstruction (D_a from the target's true code) and, given E_prior, Stage II imputation
    (from the predicted code), plus the predicted codes' per-slice diagnostics (CODE_METRICS).
    reconstruct=False skips Stage I (imputing real missing data, whose true codes do not exist)."""

    def __init__(self, stage1, prior=None, reconstruct: bool = True):
        self.stage1, self.prior = stage1.eval(), prior.eval() if prior is not None else None
        self.reconstruct = reconstruct
        self.contrasts = stage1.cfg.contrasts
        self.last_brain = None  # (image, its code-resolution brain): every scenario of a batch reuses it

    @property
    def device(self) -> torch.device:
        return next(self.stage1.parameters()).device

    def code_brain(self, image, code_size: int) -> torch.Tensor:
        if self.last_brain is None or self.last_brain[0] is not image:
            self.last_brain = (image, code_brain(image, code_size))
        return self.last_brain[1]

    @torch.no_grad()
    def __call__(self, image, available: np.ndarray) -> tuple[dict, dict]:
        """image B x N x S x S -> ({method: B x N x S x S}, {metric: B x N}); missing channels filled."""
        mask = torch.from_numpy(available).to(image.device)
        masked = image * mask[None, :, None, None]  # M_s
        common = self.stage1.common_features(masked)  # F_c
        codes = {"stage1": self.stage1.encode(image)} if self.reconstruct else {}  # B x n_code_maps x d' x h x w
        decoded = dict(codes)  # what D_a decodes per method
        if self.prior is not None:
            logits = self.prior(masked, mask[None].expand(len(image), -1))
            codes["stage2"] = self.prior.predict(logits)
            decoded["stage2"] = self.prior.decoded_codes(logits)  # the codes, or expected levels (prior_decode)
        outputs = {method: masked.clone() for method in codes}
        diagnose = len(codes) == 2 and self.stage1.quantiser.discrete
        levels = self.stage1.quantiser.level_counts is not None
        brain = self.code_brain(image, codes["stage1"].shape[-1]) if diagnose else None
        diagnostics = {}
        for t in np.flatnonzero(~available):
            for method, method_codes in decoded.items():
                decoder = self.prior.decoder if method == "stage2" else None  # None: Stage I's D_a
                outputs[method][:, t] = self.stage1.decode_code(method_codes, common, int(t), decoder)
            if diagnose:
                code_map = 0 if self.stage1.cfg.joint_code else int(t)
                found = code_diagnostics(codes["stage2"][:, code_map], codes["stage1"][:, code_map], brain, levels)
                for metric, per_slice in found.items():
                    diagnostics.setdefault(metric, torch.full(image.shape[:2], float("nan"), device=image.device))
                    diagnostics[metric][:, t] = per_slice
        return outputs, diagnostics


class DirectImputer:
    """The direct regressor's prediction for every missing contrast."""

    def __init__(self, model):
        self.model = model.eval()
        self.contrasts = model.cfg.contrasts

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, image, available: np.ndarray) -> tuple[dict, dict]:
        mask = torch.from_numpy(available).to(image.device)
        masked = image * mask[None, :, None, None]
        predicted = self.model(masked, mask[None].expand(len(image), -1))
        return {"direct": torch.where(mask[None, :, None, None], masked, predicted)}, {}


@torch.no_grad()
def evaluate_scenarios(imputer, slices, contrasts: list[str], device, batch_size: int = 64,
                       max_slices: int | None = None, brain: bool = False) -> pd.DataFrame:
    """Rows (scenario, target, n_inputs, method, psnr, ssim, mae[, *_brain][, CODE_METRICS]): means over slices.

    imputer(image, available) -> ({method: B x N x S x S}, {metric: B x N}) (CodeBrainImputer:
    stage1 and stage2, DirectImputer: direct); zero = the missing contrast left at 0.
    """
    sums = defaultdict(float)
    counts = defaultdict(int)  # slices per (scenario, target, n_inputs, method), or per metric for the extras
    n = len(slices) if max_slices is None else min(len(slices), max_slices)
    for start in range(0, n, batch_size):
        block = np.array(slices[start: min(n, start + batch_size)], dtype=np.float32)
        image = torch.from_numpy(block).to(device)
        masks = torch.from_numpy(brain_masks(block)).to(device) if brain else None
        for available in all_scenarios(len(contrasts)):
            outputs, extras = imputer(image, available)
            for t in np.flatnonzero(~available):
                key = (scenario_name(available), contrasts[t], int(available.sum()))
                target = image[:, t]
                for method, output in {"zero": torch.zeros_like(image), **outputs}.items():
                    values = slice_metrics(output[:, t], target)
                    if brain:
                        values.update({f"{k}_brain": v for k, v in slice_metrics(output[:, t], target, masks).items()})
                    for metric, per_slice in values.items():
                        sums[key + (method, metric)] += per_slice.sum().item()
                    counts[key + (method,)] += len(target)
                for metric, per_slice in extras.items():  # NaN: a slice without brain
                    sums[key + ("stage2", metric)] += per_slice[:, t].nansum().item()
                    counts[key + ("stage2", metric)] += int(per_slice[:, t].isfinite().sum())
    rows = {}
    for (*key, metric), total in sums.items():
        count = counts.get((*key, metric), counts.get(tuple(key)))
        row = rows.setdefault(tuple(key), dict(zip(("scenario", "target", "n_inputs", "method"), key)))
        row[metric] = total / count if count else float("nan")
    rows = list(rows.values())
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> dict[str, float]:
    """Unweighted means over (scenario, target) pairs per method: all pairs and the one-missing ones."""
    n_contrasts = len(table.scenario.iloc[0])
    summary = {}
    for method, rows in table.groupby("method"):
        summary[f"psnr_{method}"] = rows.psnr.mean()
        summary[f"psnr_{method}_one_missing"] = rows[rows.n_inputs == n_contrasts - 1].psnr.mean()
        for metric in CODE_METRICS:
            if metric in rows and rows[metric].notna().any():
                summary[metric] = rows[metric].mean()
                for target, per_target in rows.groupby("target"):
                    summary[f"{metric}_{target}"] = per_target[metric].mean()
    return {k: float(v) for k, v in summary.items()}
