"""Reconstruction loss: NAFNet's differentiable PSNR loss, per image (ours) or pooled over the batch (the release)."""

from __future__ import annotations

import math

import torch


def psnr_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
              eps: float = 1e-8) -> torch.Tensor:
    """-PSNR (data range 1) per image and channel, averaged; 10*log10(mse + eps).

    weight (B x C, optional): per-channel weights summed over channels (the release's 5 on
    available and 20 on missing contrasts) instead of the plain mean.
    """
    mse = (prediction.float() - target.float()).pow(2).mean(dim=(2, 3))  # B x C
    per_channel = 10 / math.log(10) * torch.log(mse + eps)
    if weight is None:
        return per_channel.mean()
    return (weight * per_channel).sum(1).mean()


def reconstruction_weights(scenario_mask: torch.Tensor, available_weight: float, missing_weight: float) -> torch.Tensor:
    """B x N weights for psnr_loss over all N contrasts: one weight on the available, another on the missing."""
    return torch.where(scenario_mask, available_weight, missing_weight).float()


def pooled_psnr_loss(prediction: torch.Tensor, target: torch.Tensor, scenario_mask: torch.Tensor,
                     available_weight: float, missing_weight: float, eps: float = 1e-8) -> torch.Tensor:
    """The release's loss: per contrast, 10*log10 of the MSE pooled over the batch and the pixels; then
    available_weight x the mean over available contrasts + missing_weight x the mean over missing ones.

    prediction, target B x N x S x S; scenario_mask B x N (True = available). With one scenario per batch
    (per_batch_mask) this is theirs exactly; with one per sample, each contrast's MSE is pooled over the samples
    where it is available, and separately where it is missing.
    """
    mse = (prediction.float() - target.float()).pow(2).mean(dim=(2, 3))  # B x N; pooled = mean of equal-size images
    total = prediction.new_zeros((), dtype=torch.float32)
    for role, weight in ((scenario_mask, available_weight), (~scenario_mask, missing_weight)):
        count = role.sum(0)  # N: samples where each contrast has this role
        present = count > 0
        if weight == 0 or not present.any():
            continue
        pooled = (mse * role).sum(0)[present] / count[present]
        total = total + weight * (10 / math.log(10) * torch.log(pooled + eps)).mean()
    return total
