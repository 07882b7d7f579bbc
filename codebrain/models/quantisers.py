"""The quantiser interface, and the paper's ablations beside FSQ: a learnt codebook (VQ) and none at all.

A quantiser is one class registered in QUANTISERS; nothing else in the package asks which one
it is. It offers:
- forward(z): posterior latent B x d x h x w -> (latent for D_a, codes B x code_channels x h x w,
  auxiliary loss), and codes_to_latent(codes), its inverse on the codes;
- code_channels and code_dtype: the shape and numpy type of one cached code map;
- discrete: whether a predicted code can be right or wrong (code accuracy is reported);
- level_counts: levels per code dimension for histograms and code-map figures (None: not levels);
- usage(codes): statistics of a split's cached codes (codes used, perplexity, histograms);
- stage2_target(cfg): what E_prior predicts for it and with which loss (models/grading.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from codebrain.models.code_usage import index_usage
from codebrain.models.fsq import FSQ
from codebrain.models.grading import ClassTarget, RegressionTarget


class VectorQuantiser(nn.Module):
    """VQ-VAE (van den Oord et al. 2017): nearest codebook entry, straight-through, commitment loss."""

    code_channels = 1  # one codebook index per position
    discrete = True
    level_counts = None

    def __init__(self, dim: int, codebook_size: int, commitment: float = 0.25):
        super().__init__()
        self.dim, self.codebook_size, self.commitment = dim, codebook_size, commitment
        self.codebook = nn.Embedding(codebook_size, dim)
        self.codebook.weight.data.uniform_(-1 / codebook_size, 1 / codebook_size)

    @classmethod
    def from_config(cls, cfg) -> "VectorQuantiser":
        return cls(cfg.code_dim, cfg.codebook_size, cfg.commitment)

    @staticmethod
    def stage2_target(cfg):
        return ClassTarget([cfg.codebook_size])

    @property
    def code_dtype(self):
        return np.uint8 if self.codebook_size <= 256 else np.uint16

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

    def usage(self, codes: np.ndarray) -> dict:
        return {**index_usage(codes, self.codebook_size), "level_histograms": []}


class Continuous(nn.Module):
    """No quantisation: the bounded latent itself is the code (Stage II regresses it)."""

    code_dtype = np.float16
    discrete = False
    level_counts = None

    def __init__(self, dim: int):
        super().__init__()
        self.dim = self.code_channels = dim

    @classmethod
    def from_config(cls, cfg) -> "Continuous":
        return cls(cfg.code_dim)

    @staticmethod
    def stage2_target(cfg):
        return RegressionTarget(cfg.code_dim)

    def forward(self, z):
        latent = torch.tanh(z.float())
        return latent, latent.detach(), z.new_zeros(())

    def codes_to_latent(self, codes):
        return codes.float()

    def usage(self, codes: np.ndarray) -> dict:
        return {}


QUANTISERS = {"fsq": FSQ, "vq": VectorQuantiser, "continuous": Continuous}


def quantiser_class(name: str):
    if name not in QUANTISERS:
        raise ValueError(f"model.quantiser: {name!r} is not one of {sorted(QUANTISERS)}")
    return QUANTISERS[name]


def build_quantiser(cfg) -> nn.Module:
    """The quantiser a ModelConfig names, built from its code keys (code_dim, levels, codebook_size, ...)."""
    return quantiser_class(cfg.quantiser).from_config(cfg)
