"""Finite scalar quantisation (Mentzer et al. 2023), after lucidrains' finite_scalar_quantization.

Each of the d latent channels is squashed into a bounded range and rounded to one of L_i
integer levels, so a code is a point of a fixed grid with prod(L_i) entries and no codebook
to learn or collapse. Per dimension (`bound`, as lucidrains' bound):

    Z = h tanh(F + s) - o,   h = (1 + eps)(L - 1)/2,   o = 1/2 for even L (0 for odd),   s = atanh(o / h)

so F = 0 gives Z = 0, and Zq = round(Z), with a straight-through gradient, takes exactly L
integer levels: -(L-1)/2 .. (L-1)/2 for odd L (docs/design.md's floor(L/2) tanh(F), up to eps),
-L/2 .. L/2 - 1 for even L, an asymmetric grid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from codebrain.models.code_usage import index_usage
from codebrain.models.grading import ClassTarget, GradingTarget


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward."""
    return z + (z.round() - z).detach()


class FSQ(nn.Module):
    """The quantiser interface (models/quantisers.py): codes are d integer levels per position, as uint8."""

    code_dtype = np.uint8
    discrete = True

    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        assert all(n >= 2 for n in levels), f"every FSQ dimension needs at least 2 levels, got {levels}"
        self.levels_list = list(levels)  # L_i per code dimension; d = len(levels)
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0), persistent=False)
        self.eps = eps

    @classmethod
    def from_config(cls, cfg) -> "FSQ":
        return cls(cfg.levels)

    @staticmethod
    def stage2_target(cfg):
        """Ordinal grading bits (the paper), or L_i classes per dimension (its "CLS" ablation)."""
        return GradingTarget(cfg.levels, cfg.grading_mean) if cfg.prior_loss == "grading" else ClassTarget(cfg.levels)

    @property
    def dim(self) -> int:
        return len(self.levels_list)

    @property
    def code_channels(self) -> int:
        return self.dim

    @property
    def level_counts(self) -> list[int]:
        return self.levels_list

    @property
    def codebook_size(self) -> int:
        return int(torch.prod(self.levels))

    def _per_dim(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)  # broadcast over B x d x h x w

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """z -> h tanh(z + s) - o (the module docstring): rounding it hits exactly L levels."""
        half_l = self._per_dim((self.levels - 1) * (1 + self.eps) / 2)
        offset = self._per_dim((self.levels % 2 == 0) * 0.5)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: B x d x h x w -> (quantised latent scaled to about [-1, 1], integer levels in [0, L_i), aux loss 0)."""
        assert z.shape[1] == self.dim, f"FSQ expects {self.dim} channels, got {z.shape[1]}"
        with torch.autocast(z.device.type, enabled=False):  # rounding in bf16 would move levels
            quantised = round_ste(self.bound(z.float()))  # integers -L//2 .. (L-1)//2, as float
            half_width = self._per_dim(self.levels // 2)
            codes = (quantised.detach() + half_width).round().to(torch.uint8)
            return quantised / half_width, codes, z.new_zeros(())

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer levels B x d x h x w -> the latent the decoder saw for them."""
        half_width = self._per_dim(self.levels // 2)
        return (codes.float() - half_width) / half_width

    def levels_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """B x d x h x w levels -> B x h x w code index in [0, prod(L_i))."""
        return (codes.long() * self._per_dim(self.basis)).sum(1)

    def indices_to_levels(self, indices: torch.Tensor) -> torch.Tensor:
        """B x h x w index -> B x d x h x w levels."""
        return ((indices.long()[:, None] // self._per_dim(self.basis)) % self._per_dim(self.levels)).to(torch.uint8)

    def usage(self, codes: np.ndarray) -> dict:
        """codes: slices x maps x d x h x w levels -> codes used of prod(L_i), perplexity, level histogram per dim."""
        levels = torch.from_numpy(codes.reshape(-1, *codes.shape[2:]))  # (slices maps) x d x h x w
        histograms = [np.bincount(codes[:, :, i].ravel(), minlength=n).tolist() for i, n in enumerate(self.levels_list)]
        return {**index_usage(self.levels_to_indices(levels).numpy(), self.codebook_size),
                "level_histograms": histograms}
