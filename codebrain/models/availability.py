"""The availability bits as input planes: which contrasts are given, for networks that must not guess it from
zeros (a given contrast can be dark, a missing one is zero)."""

from __future__ import annotations

import torch


def with_availability(masked: torch.Tensor, scenario_mask: torch.Tensor) -> torch.Tensor:
    """M_s B x N x S x S, scenario_mask B x N (True = available) -> B x 2N x S x S: M_s, then one constant plane
    per contrast (1 = given)."""
    bits = scenario_mask[:, :, None, None].to(masked.dtype).expand_as(masked)
    return torch.cat([masked, bits], 1)
