"""PatchGAN discriminator (pix2pix, Isola et al. 2017) and its adversarial losses.

Each output pixel judges one receptive-field patch as real or fake. InstanceNorm rather than
BatchNorm: statistics per image keep data-parallel training identical to one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, width: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for i in range(1, n_layers + 1):
            out = width * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out, affine=True),
                       nn.LeakyReLU(0.2)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, padding=1))  # B x 1 x patches
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def adversarial_loss(logits: torch.Tensor, real: bool, kind: str = "vanilla") -> torch.Tensor:
    """vanilla: BCE with logits (pix2pix); lsgan: least squares (the release)."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits.float(), target.float())
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())
