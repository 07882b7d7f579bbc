"""The quantiser ablations of the paper beside FSQ: a learnt codebook (VQ) and no quantisation.

Every quantiser maps the posterior latent B x d x h x w to (latent for the decoder, codes that
Stage II learns to predict, auxiliary loss), and back from codes to latent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codebrain.models.fsq import FSQ


class VectorQuantiser(nn.Module):
    """VQ-VAE (van den Oord et al. 2017): nearest codebook entry, straight-through, commitment loss."""

    def __init__(self, dim: int, codebook_size: int, commitment: float = 0.25):
        super().__init__()
        self.dim, self.codebook_size, self.commitment = dim, codebook_size, commitment
        self.codebook = nn.Embedding(codebook_size, dim)
        self.codebook.weight.data.uniform_(-1 / codebook_size, 1 / codebook_size)

    def forward(self, z):
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)  # (B h w) x d
            indices = torch.cdist(flat, self.codebook.weight).argmin(1)
            chosen = self.codebook(indices).view(z.shape[0], z.shape[2], z.shape[3], self.dim).permute(0, 3, 1, 2)
            loss = F.mse_loss(chosen, z.detach()) + self.commitment * F.mse_loss(z, chosen.detach())
            latent = z + (chosen - z).detach()
        return latent, indices.view(z.shape[0], 1, z.shape[2], z.shape[3]), loss  # codes: B x 1 x h x w

    def codes_to_latent(self, codes):
        return self.codebook(codes[:, 0].long()).permute(0, 3, 1, 2)


class Continuous(nn.Module):
    """No quantisation: the bounded latent itself is the code (Stage II regresses it)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, z):
        latent = torch.tanh(z.float())
        return latent, latent.detach(), z.new_zeros(())

    def codes_to_latent(self, codes):
        return codes.float()


def build_quantiser(kind: str, levels: list[int], codebook_size: int, commitment: float) -> nn.Module:
    if kind == "fsq":
        return FSQ(levels)
    if kind == "vq":
        return VectorQuantiser(len(levels), codebook_size, commitment)
    if kind == "continuous":
        return Continuous(len(levels))
    raise ValueError(f"unknown quantiser {kind!r} (fsq, vq, continuous)")
