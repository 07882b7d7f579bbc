"""The unified direct regressor: the "pixel-to-pixel" baseline CodeBrain is compared against.

One NAFNet U-Net maps the masked stack plus the availability bits (as constant planes) to all
N contrasts at once, trained with the PSNR loss on the missing ones. Same backbone pieces,
data and budget as CodeBrain; no codes, so nothing but pixels carries the missing contrast.
"""

from __future__ import annotations

from torch import nn

from codebrain.models.availability import with_availability
from codebrain.models.config import ModelConfig
from codebrain.models.nafnet import NAFDecoder, NAFEncoder


class DirectRegressor(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        n = len(cfg.contrasts)
        self.encoder = NAFEncoder(2 * n, cfg.width, cfg.enc_blocks, cfg.middle_blocks)
        self.decoder = NAFDecoder(cfg.width, cfg.dec_blocks, n)

    def forward(self, masked, scenario_mask):
        """M_s B x N x S x S, scenario_mask B x N (True = available) -> all contrasts, B x N x S x S."""
        skips, bottleneck = self.encoder(with_availability(masked, scenario_mask))  # B x 2N x S x S in
        return self.decoder(bottleneck, skips)
