"""Stage II: E_prior predicts the codes of all contrasts from the masked stack (docs/design.md, "The method").

Output: for each code map (one per contrast, or one joint map in the release protocol) and
each code dimension, the logits of the chosen target (grading bits, classes, or values).
"""

from __future__ import annotations

import torch
from torch import nn

from codebrain.models.availability import with_availability
from codebrain.models.config import ModelConfig
from codebrain.models.nafnet import NAFEncoder
from codebrain.models.quantisers import quantiser_class
from codebrain.models.reconstructor import build_decoder


class CodePrior(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if len(cfg.prior_enc_blocks) != len(cfg.enc_blocks):
            raise ValueError("model.prior_enc_blocks needs as many levels as model.enc_blocks (same code size)")
        self.cfg = cfg
        self.target = quantiser_class(cfg.quantiser).stage2_target(cfg)
        n = len(cfg.contrasts)
        in_channels = 2 * n if cfg.prior_availability else n
        self.encoder = NAFEncoder(in_channels, cfg.prior_width, cfg.prior_enc_blocks, cfg.prior_middle_blocks)
        self.head = nn.Conv2d(self.encoder.out_channels, cfg.n_code_maps * self.target.channels, 1)
        # model.finetune_decoder: a copy of Stage I's D_a that learns to decode what E_prior predicts
        self.decoder = build_decoder(cfg) if cfg.finetune_decoder else None

    def forward(self, masked, scenario_mask):
        """M_s: B x N x S x S, scenario_mask B x N (True = available) -> logits B x n_code_maps x channels x h x w."""
        if self.cfg.prior_availability:
            masked = with_availability(masked, scenario_mask)  # B x 2N x S x S
        logits = self.head(self.encoder(masked)[1])
        return logits.view(len(masked), self.cfg.n_code_maps, self.target.channels, *logits.shape[2:])

    def loss(self, logits, codes, map_weights=None):
        """codes: B x n_code_maps x d' x h x w, the cached Stage I codes of every contrast; map_weights B x
        n_code_maps: a weighted mean over the code maps (None: all alike)."""
        per_map = self.target.loss(logits.flatten(0, 1), codes.flatten(0, 1))  # (B n_code_maps)
        if map_weights is None:
            return per_map.mean()
        weights = map_weights.flatten().to(per_map.dtype)
        return (per_map * weights).sum() / weights.sum()

    def predict(self, logits):
        """Logits -> codes, B x n_code_maps x d' x h x w."""
        return self.target.predict(logits.flatten(0, 1)).unflatten(0, logits.shape[:2])

    def decoded_codes(self, logits):
        """What D_a decodes: the predicted codes, or (prior_decode: expected) each entry's expected level, a
        fractional level between the grid's points."""
        if self.cfg.prior_decode == "hard":
            return self.predict(logits)
        distribution = self.distribution(logits)  # B x n_code_maps x d x L x h x w
        levels = torch.arange(distribution.shape[3], device=logits.device, dtype=distribution.dtype)
        return (distribution * levels[:, None, None]).sum(3)

    def distribution(self, logits):
        """Logits -> P(level = j), B x n_code_maps x d x L x h x w (the targets that predict levels)."""
        if not hasattr(self.target, "distribution"):
            raise ValueError(f"model.quantiser {self.cfg.quantiser}: E_prior regresses the code, it gives no "
                             f"distribution to sample from")
        return self.target.distribution(logits.flatten(0, 1)).unflatten(0, logits.shape[:2])
