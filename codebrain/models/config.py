"""The model's shape in one dataclass, saved in every checkpoint so a model can be rebuilt from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

# The keys that shape E_prior alone: changing them retrains Stage II but not Stage I.
PRIOR_FIELDS = ("prior_width", "prior_enc_blocks", "prior_middle_blocks", "prior_loss", "prior_availability",
                "prior_decode", "finetune_decoder")
# The keys of Stage I that Stage II depends on (its code maps and contrasts): a Stage I that differs is refused.
STAGE1_FIELDS = ("contrasts", "quantiser", "levels", "code_dim", "codebook_size", "joint_code", "enc_blocks")


@dataclass
class ModelConfig:
    contrasts: list[str] = field(default_factory=lambda: ["T1", "T2", "PD"])
    # Stage I: E_posterior, E_s and D_a share the NAFNet shape; code maps are H / 2**len(enc_blocks)
    width: int = 16
    enc_blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    middle_blocks: int = 1
    dec_blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    common_width: int = 0  # E_s width; 0 = width (the release uses 96)
    common_features: bool = True  # F_c on/off (the paper's ablation)
    joint_code: bool = False  # release: one code map from all N contrasts; D_a outputs all N
    decoder: str = "unet"  # unet (NAFNet with skips from E_s) | wide (release: 1x1 fusion, blocks, PixelShuffle)
    decoder_skips: bool = True  # unet: E_s's skips into D_a; False: F_c enters at the bottleneck only (release)
    decoder_width: int = 1536
    decoder_blocks: int = 6
    # the code: d dimensions with L levels each (or per-dimension levels, e.g. the release's 8,8,8,5,5,5)
    quantiser: str = "fsq"  # fsq | vq | continuous
    code_dim: int = 9
    levels: int | list[int] = 5
    codebook_size: int = 512  # vq only
    commitment: float = 0.25  # vq only
    # Stage II: E_prior
    prior_width: int = 16
    prior_enc_blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    prior_middle_blocks: int = 1
    prior_loss: str = "grading"  # grading (ordinal BCE) | ce; vq always ce, continuous l1
    prior_availability: bool = False  # E_prior also sees the availability bits as constant planes (as the regressor)
    prior_decode: str = "hard"  # what D_a decodes: hard (the grading count, paper) | expected (sum_j j P(level = j))
    finetune_decoder: bool = False  # Stage II keeps its own copy of D_a, trained to decode the predicted codes
    # PatchGAN
    disc_width: int = 64
    disc_layers: int = 3
    disc_conditional: bool = False  # release: D sees the masked input beside the image

    def __post_init__(self):
        if isinstance(self.levels, int):
            self.levels = [self.levels] * self.code_dim
        self.levels, self.code_dim = list(self.levels), len(self.levels)
        if self.decoder not in ("unet", "wide"):
            raise ValueError(f"model.decoder: {self.decoder!r} is not unet or wide")
        if self.prior_decode not in ("hard", "expected"):
            raise ValueError(f"model.prior_decode: {self.prior_decode!r} is not hard or expected")
        if self.prior_loss not in ("grading", "ce"):
            raise ValueError(f"model.prior_loss: {self.prior_loss!r} is not grading or ce")
        if self.finetune_decoder and self.joint_code:
            raise ValueError("model.finetune_decoder needs a code map per contrast (model.joint_code is on)")
        if len(self.dec_blocks) != len(self.enc_blocks):
            raise ValueError("model.dec_blocks must have one entry per encoder level (model.enc_blocks)")

    @property
    def n_code_maps(self) -> int:
        """Code maps per slice: one per contrast (paper) or one joint map (release)."""
        return 1 if self.joint_code else len(self.contrasts)

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.enc_blocks)

    @classmethod
    def from_dict(cls, section: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"model config: unknown keys {sorted(unknown)}")
        return cls(**section)

    def to_dict(self) -> dict:
        return asdict(self)

