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


class CodeBrainImputer:
    """Stage I reconstruction (D_a from the target's true code) and, given E_prior, Stage II imputation
    (from the predicted code), plus the predicted codes' per-slice accuracy. reconstruct=False
    skips Stage I (imputing real missing data, whose true codes do not exist)."""

    def __init__(self, stage1, prior=None, reconstruct: bool = True):
        self.stage1, self.prior = stage1.eval(), prior.eval() if prior is not None else None
        self.reconstruct = reconstruct

    @torch.no_grad()
    def __call__(self, image, available: np.ndarray) -> tuple[dict, dict]:
        """image B x N x S x S -> ({method: B x N x S x S}, {metric: B x N}); missing channels filled."""
        mask = torch.from_numpy(available).to(image.device)
        masked = image * mask[None, :, None, None]  # M_s
        common = self.stage1.common_features(masked)  # F_c
        codes = {"stage1": self.stage1.encode(image)} if self.reconstruct else {}  # B x n_code_maps x d' x h x w
        if self.prior is not None:
            codes["stage2"] = self.prior.predict(self.prior(masked))
        outputs = {method: masked.clone() for method in codes}
        accuracy = torch.full(image.shape[:2], float("nan"), device=image.device)
        for t in np.flatnonzero(~available):
            for method, method_codes in codes.items():
                outputs[method][:, t] = self.stage1.decode_code(method_codes, common, int(t))
            if len(codes) == 2 and self.stage1.quantiser.discrete:
                code_map = 0 if self.stage1.cfg.joint_code else int(t)
                hits = codes["stage2"][:, code_map] == codes["stage1"][:, code_map]
                accuracy[:, t] = hits.float().flatten(1).mean(1)
        return outputs, ({"code_accuracy": accuracy} if len(codes) == 2 else {})


class DirectImputer:
    """The direct regressor's prediction for every missing contrast."""

    def __init__(self, model):
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, image, available: np.ndarray) -> tuple[dict, dict]:
        mask = torch.from_numpy(available).to(image.device)
        masked = image * mask[None, :, None, None]
        predicted = self.model(masked, mask[None].expand(len(image), -1))
        return {"direct": torch.where(mask[None, :, None, None], masked, predicted)}, {}


@torch.no_grad()
def evaluate_scenarios(imputer, slices, contrasts: list[str], device, batch_size: int = 64,
                       max_slices: int | None = None, brain: bool = False) -> pd.DataFrame:
    """Rows (scenario, target, n_inputs, method, psnr, ssim, mae[, *_brain][, code_accuracy]): means over slices.

    imputer(image, available) -> ({method: B x N x S x S}, {metric: B x N}) (CodeBrainImputer:
    stage1 and stage2, DirectImputer: direct); zero = the missing contrast left at 0.
    """
    sums = defaultdict(float)
    counts = defaultdict(int)
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
                for metric, per_slice in extras.items():
                    sums[key + ("stage2", metric)] += per_slice[:, t].sum().item()
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
