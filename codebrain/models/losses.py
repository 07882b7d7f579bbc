"""Reconstruction loss: NAFNet's differentiable PSNR loss."""

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
