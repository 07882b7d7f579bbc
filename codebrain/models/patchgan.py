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


class ReleaseDiscriminator(nn.Module):
    """The authors' release (eriklindernoren's pix2pix): `n_layers` 4 x 4 stride-2 convolutions (width, 2 x width,
    ..., at most 8 x width; InstanceNorm without affine after all but the first), then ZeroPad(1, 0, 1, 0) and a 4 x 4
    convolution without bias to one logit per contrast and patch: B x 2N x S x S -> B x N x S/2^n x S/2^n."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, n_layers: int = 4):
        super().__init__()
        layers, channels = [], in_channels
        for i in range(n_layers):
            out = width * min(2 ** i, 8)
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.InstanceNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
            channels = out
        layers += [nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(channels, out_channels, 4, padding=1, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def build_discriminator(cfg) -> nn.Module:
    """D for a ModelConfig: pix2pix over D_a's outputs, or the release's over [judged stack; real stack]."""
    n = len(cfg.contrasts)
    if cfg.discriminator == "release":
        return ReleaseDiscriminator(2 * n, n, cfg.disc_width, cfg.disc_layers)
    return PatchDiscriminator(n if cfg.joint_code else 1, cfg.disc_width, cfg.disc_layers)


def adversarial_loss(logits: torch.Tensor, target, kind: str = "vanilla") -> torch.Tensor:
    """vanilla: BCE with logits (pix2pix); lsgan: least squares (the release). target: 1 (real), 0 (fake), or a
    tensor broadcast over the logits (the release's per-contrast target m of a composite)."""
    target = torch.as_tensor(target, dtype=torch.float32, device=logits.device).expand_as(logits)
    if kind == "lsgan":
        return F.mse_loss(logits.float(), target)
    return F.binary_cross_entropy_with_logits(logits.float(), target)
