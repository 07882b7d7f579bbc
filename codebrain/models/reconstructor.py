"""Stage I: E_posterior, the quantiser, E_s and D_a (docs/design.md, "The method").

The anchor contrast M_a is encoded into a d x h x w latent, quantised into its code Zq_a;
the masked stack M_s (anchor among the missing) gives the common features F_c; D_a decodes
concat[Zq_a, F_c] back into M_a. The code can only carry what F_c lacks: the contrast- and
instance-specific part. No module knows which contrast it is looking at.
"""

from __future__ import annotations

import torch
from torch import nn

from codebrain.models.config import ModelConfig
from codebrain.models.nafnet import NAFDecoder, NAFEncoder, blocks
from codebrain.models.quantisers import build_quantiser


class PosteriorEncoder(nn.Module):
    """E_posterior: one contrast (or, release, all N) -> latent F_a, d x H/2^levels x W/2^levels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        in_channels = len(cfg.contrasts) if cfg.joint_code else 1
        self.encoder = NAFEncoder(in_channels, cfg.width, cfg.enc_blocks, cfg.middle_blocks)
        self.to_latent = nn.Conv2d(self.encoder.out_channels, cfg.code_dim, 1)

    def forward(self, x):
        return self.to_latent(self.encoder(x)[1])


class UNetDecoder(nn.Module):
    """D_a (paper): concat[code, F_c bottleneck] -> 1x1 fusion -> NAFNet decoder with F_c's skips (decoder_skips;
    without them the code is the only way past the bottleneck)."""

    def __init__(self, cfg: ModelConfig, common_channels: int, out_channels: int):
        super().__init__()
        self.skips = cfg.decoder_skips
        channels = cfg.width * cfg.downsampling
        self.fuse = nn.Conv2d(cfg.code_dim + common_channels, channels, 1)
        self.middle = blocks(channels, cfg.middle_blocks)
        self.decoder = NAFDecoder(cfg.width, cfg.dec_blocks, out_channels)

    def forward(self, latent, common):
        skips, bottleneck = common if common is not None else (None, None)
        skips = skips if self.skips else None
        x = latent if bottleneck is None else torch.cat([latent, bottleneck], 1)
        return self.decoder(self.middle(self.fuse(x)), skips)


class ReleaseDecoder(nn.Module):
    """D_a (release): concat[code, F_c bottleneck] -> 1x1 to decoder_width -> NAFBlocks there -> per level 1x1 +
    PixelShuffle(2) + NAFBlocks at E_s's level widths (96-wide E_s: 384, 192, 96) -> 3x3 conv; no skips."""

    def __init__(self, cfg: ModelConfig, common_channels: int, out_channels: int):
        super().__init__()
        self.fuse = nn.Conv2d(cfg.code_dim + common_channels, cfg.decoder_width, 1)
        self.middle = blocks(cfg.decoder_width, cfg.decoder_blocks)
        width, channels, levels = cfg.common_width or cfg.width, cfg.decoder_width, len(cfg.dec_blocks)
        self.ups = nn.ModuleList()
        for i, count in enumerate(cfg.dec_blocks):
            out = width * 2 ** (levels - 1 - i)
            self.ups.append(nn.Sequential(nn.Conv2d(channels, 4 * out, 1), nn.PixelShuffle(2), blocks(out, count)))
            channels = out
        self.ending = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, latent, common):
        x = self.middle(self.fuse(latent if common is None else torch.cat([latent, common[1]], 1)))
        for up in self.ups:
            x = up(x)  # channels / 2 (the first: decoder_width -> 4 x width), H and W x 2
        return self.ending(x)


def build_decoder(cfg: ModelConfig) -> nn.Module:
    """D_a for E_s's features (Stage I's, or the copy Stage II fine-tunes: model.finetune_decoder)."""
    common_width = cfg.common_width or cfg.width
    common_channels = common_width * cfg.downsampling if cfg.common_features else 0
    decoder = ReleaseDecoder if cfg.decoder == "release" else UNetDecoder
    return decoder(cfg, common_channels, len(cfg.contrasts) if cfg.joint_code else 1)


class Reconstructor(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.posterior = PosteriorEncoder(cfg)
        self.quantiser = build_quantiser(cfg)
        self.common = (NAFEncoder(len(cfg.contrasts), cfg.common_width or cfg.width, cfg.enc_blocks,
                              cfg.middle_blocks)
                       if cfg.common_features else None)  # E_s over M_s (None: the ablation drops F_c)
        self.decoder = build_decoder(cfg)

    def common_features(self, masked):
        """F_c = E_s(M_s): (skips, bottleneck), or None when the ablation drops it."""
        return self.common(masked) if self.common is not None else None

    def posterior_input(self, image, anchor):
        """M_a: B x 1 x S x S, the anchor channel (release: the whole stack)."""
        if self.cfg.joint_code:
            return image
        return image[torch.arange(len(image), device=image.device), anchor][:, None]

    def encode(self, image):
        """Codes of every contrast: B x N x S x S -> B x n_code_maps x d' x h x w (for the code cache)."""
        b, n = image.shape[:2]
        x = image if self.cfg.joint_code else image.reshape(b * n, 1, *image.shape[2:])
        _, codes, _ = self.quantiser(self.posterior(x))
        return codes.reshape(b, self.cfg.n_code_maps, *codes.shape[1:])

    def decode(self, latent, masked):
        """D_a(concat[latent, E_s(M_s)]): B x 1 x S x S (release: B x N x S x S)."""
        return self.decoder(latent, self.common_features(masked))

    def decode_code(self, codes, common, target: int, decoder: nn.Module | None = None):
        """Contrast `target` from its code map (B x n_code_maps x d' x h x w) and F_c: B x S x S, by D_a (or by
        `decoder`, a fine-tuned copy)."""
        code_map, channel = (0, target) if self.cfg.joint_code else (target, 0)
        return (decoder or self.decoder)(self.quantiser.codes_to_latent(codes[:, code_map]), common)[:, channel]

    def forward(self, image, scenario_mask, anchor):
        """image B x N x S x S, scenario_mask B x N (True = available), anchor B -> reconstruction, codes, aux loss."""
        masked = image * scenario_mask[:, :, None, None].to(image.dtype)  # M_s
        latent, codes, quantiser_loss = self.quantiser(self.posterior(self.posterior_input(image, anchor)))
        return self.decode(latent, masked), codes, quantiser_loss
