"""Stage II: E_prior predicts the codes of all contrasts from the masked stack (docs/design.md, "The method").

Output: for each code map (one per contrast, or one joint map in the release protocol) and
each code dimension, the logits of the chosen target (grading bits, classes, or values).
"""

from __future__ import annotations

from torch import nn

from codebrain.models.config import ModelConfig
from codebrain.models.nafnet import NAFEncoder
from codebrain.models.quantisers import quantiser_class


class CodePrior(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if len(cfg.prior_enc_blocks) != len(cfg.enc_blocks):
            raise ValueError("model.prior_enc_blocks needs as many levels as model.enc_blocks (same code size)")
        self.cfg = cfg
        self.target = quantiser_class(cfg.quantiser).stage2_target(cfg)
        self.encoder = NAFEncoder(len(cfg.contrasts), cfg.prior_width, cfg.prior_enc_blocks, cfg.prior_middle_blocks)
        self.head = nn.Conv2d(self.encoder.out_channels, cfg.n_code_maps * self.target.channels, 1)

    def forward(self, masked):
        """M_s: B x N x S x S -> logits B x n_code_maps x channels x h x w."""
        logits = self.head(self.encoder(masked)[1])
        return logits.view(len(masked), self.cfg.n_code_maps, self.target.channels, *logits.shape[2:])

    def loss(self, logits, codes):
        """codes: B x n_code_maps x d' x h x w, the cached Stage I codes of every contrast."""
        return self.target.loss(logits.flatten(0, 1), codes.flatten(0, 1))

    def predict(self, logits):
        """Logits -> codes, B x n_code_maps x d' x h x w."""
        return self.target.predict(logits.flatten(0, 1)).unflatten(0, logits.shape[:2])

    def distribution(self, logits):
        """Logits -> P(level = j), B x n_code_maps x d x L x h x w (the targets that predict levels)."""
        if not hasattr(self.target, "distribution"):
            raise ValueError(f"model.quantiser {self.cfg.quantiser}: E_prior regresses the code, it gives no "
                             f"distribution to sample from")
        return self.target.distribution(logits.flatten(0, 1)).unflatten(0, logits.shape[:2])
