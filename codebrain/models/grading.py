"""What Stage II predicts per code dimension, and its loss: ordinal grading (paper), classes (CE ablation, VQ)
or the latent itself (continuous ablation).

Grading (docs/design.md, "The method"): a level y in {0..L-1} is L-1 ordinal bits, bit j = 1 if j < y; the head
gives one logit per bit and is trained with BCE; the predicted level is the number of bits
with probability > 0.5. Neighbouring levels then differ in one bit, so a near miss costs less
than a far one, which cross-entropy over L classes cannot express.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def level_to_bits(levels: torch.Tensor, n_levels: int) -> torch.Tensor:
    """B x h x w integer levels -> B x (L-1) x h x w ordinal bits (float)."""
    bits = torch.arange(n_levels - 1, device=levels.device).view(1, -1, 1, 1)
    return (bits < levels.long()[:, None]).float()


def bits_to_level(logits: torch.Tensor) -> torch.Tensor:
    """B x (L-1) x h x w bit logits -> B x h x w levels: how many bits have p > 0.5."""
    return (logits > 0).sum(1)


def bits_to_distribution(logits: torch.Tensor) -> torch.Tensor:
    """B x (L-1) x h x w bit logits -> B x L x h x w P(level = j).

    Bit j's probability is P(level > j); the head does not make it non-increasing in j, so it is made so
    (running minimum), framed by P(level >= 0) = 1 and P(level >= L) = 0, and differenced. For such
    monotone bits, `bits_to_level` is the distribution's median."""
    above = torch.sigmoid(logits.float()).cummin(dim=1).values  # P(level > j), j = 0 .. L-2
    at_least = torch.cat([torch.ones_like(above[:, :1]), above, torch.zeros_like(above[:, :1])], 1)
    return at_least[:, :-1] - at_least[:, 1:]


def padded_stack(distributions: list[torch.Tensor]) -> torch.Tensor:
    """Per-dimension B x L_i x h x w distributions -> B x d x max(L) x h x w, zero beyond each L_i."""
    width = max(p.shape[1] for p in distributions)
    return torch.stack([F.pad(p, (0, 0, 0, 0, 0, width - p.shape[1])) for p in distributions], 1)


def sample_levels(distribution: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """... x L x h x w level distributions -> samples x ... x h x w levels drawn from them (inverse CDF)."""
    cdf = distribution.cumsum(-3)
    draws = torch.rand((samples, *cdf.shape[:-3], 1, *cdf.shape[-2:]), generator=generator, device=cdf.device)
    levels = (cdf[None] < draws).sum(-3)
    return levels.clamp(max=distribution.shape[-3] - 1).to(torch.uint8)


class GradingTarget:
    """FSQ levels, ordinal BCE over sum(L_i - 1) bits: the mean over all bits, or (mean: dimensions, the release)
    each dimension's mean first, then the mean over dimensions (a 5-level dimension then weighs as much as an
    8-level one)."""

    def __init__(self, levels: list[int], mean: str = "bits"):
        self.levels, self.mean = levels, mean
        self.channels = sum(n - 1 for n in levels)

    def loss(self, logits, codes):
        """logits B x sum(L_i-1) x h x w, codes B x d x h x w -> B losses."""
        bits = torch.cat([level_to_bits(codes[:, i], n) for i, n in enumerate(self.levels)], 1)
        per_bit = F.binary_cross_entropy_with_logits(logits.float(), bits, reduction="none")  # B x bits x h x w
        if self.mean == "bits":
            return per_bit.flatten(1).mean(1)
        chunks = torch.split(per_bit, [n - 1 for n in self.levels], dim=1)
        return torch.stack([chunk.flatten(1).mean(1) for chunk in chunks], 1).mean(1)

    def predict(self, logits):
        chunks = torch.split(logits, [n - 1 for n in self.levels], dim=1)
        return torch.stack([bits_to_level(chunk) for chunk in chunks], 1).to(torch.uint8)

    def distribution(self, logits):
        """B x d x max(L) x h x w: P(level = j) per dimension."""
        chunks = torch.split(logits, [n - 1 for n in self.levels], dim=1)
        return padded_stack([bits_to_distribution(chunk) for chunk in chunks])


class ClassTarget:
    """Cross-entropy over L_i classes per dimension (the paper's "CLS" ablation; VQ's one index of K)."""

    def __init__(self, levels: list[int]):
        self.levels = levels
        self.channels = sum(levels)

    def loss(self, logits, codes):
        """-> B losses, each the mean over dimensions and positions."""
        chunks = torch.split(logits.float(), self.levels, dim=1)
        return sum(F.cross_entropy(chunk, codes[:, i].long(), reduction="none").flatten(1).mean(1)
                   for i, chunk in enumerate(chunks)) / len(chunks)

    def predict(self, logits):
        chunks = torch.split(logits, self.levels, dim=1)
        dtype = torch.uint8 if max(self.levels) <= 256 else torch.int64
        return torch.stack([chunk.argmax(1) for chunk in chunks], 1).to(dtype)

    def distribution(self, logits):
        """B x d x max(L) x h x w: each dimension's softmax."""
        return padded_stack([chunk.float().softmax(1) for chunk in torch.split(logits, self.levels, dim=1)])


class RegressionTarget:
    """The continuous latent, L1 loss."""

    def __init__(self, dim: int):
        self.channels = dim

    def loss(self, logits, codes):
        return F.l1_loss(logits.float(), codes.float(), reduction="none").flatten(1).mean(1)

    def predict(self, logits):
        return logits.float()
