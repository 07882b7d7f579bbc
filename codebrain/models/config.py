"""The model's shape in one typed section, saved in every checkpoint so a model can be rebuilt from it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, model_validator

from codebrain import CONTRASTS

Contrast = Literal[CONTRASTS]

# The keys that shape E_prior alone: changing them retrains Stage II but not Stage I.
PRIOR_FIELDS = ("prior_width", "prior_enc_blocks", "prior_middle_blocks", "prior_loss", "grading_mean",
                "prior_availability", "prior_decode", "finetune_decoder")
# Keys that older checkpoints saved and that shape no saved network: dropped when one is rebuilt.
RETIRED_FIELDS = ("disc_conditional",)  # the discriminator is not in a checkpoint (replaced by `discriminator`)
# The keys of Stage I that Stage II depends on (its code maps and contrasts): a Stage I that differs is refused.
STAGE1_FIELDS = ("contrasts", "quantiser", "levels", "code_dim", "codebook_size", "joint_code", "enc_blocks")


class ModelConfig(BaseModel):
    """The networks' shape (the `model` section of an experiment). Types and choices are checked here, so a bad
    value stops the pipeline at start-up with its key, not a training job hours later."""

    model_config = ConfigDict(extra="forbid")

    contrasts: list[Contrast] = Field(default_factory=lambda: ["T1", "T2", "PD"], min_length=2)
    # Stage I: E_posterior, E_s and D_a share the NAFNet shape; code maps are H / 2**len(enc_blocks)
    width: PositiveInt = 16
    enc_blocks: list[NonNegativeInt] = Field(default_factory=lambda: [1, 1, 1], min_length=1)
    middle_blocks: NonNegativeInt = 1
    dec_blocks: list[NonNegativeInt] = Field(default_factory=lambda: [1, 1, 1], min_length=1)
    common_width: NonNegativeInt = 0  # E_s width; 0 = width (the release uses 96)
    common_features: bool = True  # F_c on/off (the paper's ablation)
    joint_code: bool = False  # release: one code map from all N contrasts; D_a outputs all N
    # unet: NAFNet with skips from E_s; release: 1x1 fusion to decoder_width, decoder_blocks there, then per level
    # 1x1 + PixelShuffle(2) + dec_blocks NAFBlocks at E_s's widths, no skips
    decoder: Literal["unet", "release"] = "unet"
    decoder_skips: bool = True  # unet: E_s's skips into D_a; False: F_c enters at the bottleneck only
    decoder_width: PositiveInt = 1536  # release decoder only
    decoder_blocks: NonNegativeInt = 6  # release decoder only
    # the code: d dimensions with L levels each (or per-dimension levels, e.g. the release's 8,8,8,5,5,5)
    quantiser: Literal["fsq", "vq", "continuous"] = "fsq"  # models/quantisers.py QUANTISERS
    code_dim: PositiveInt = 9
    levels: Annotated[int, Field(ge=2)] | list[Annotated[int, Field(ge=2)]] = 5
    codebook_size: Annotated[int, Field(ge=2)] = 512  # vq only
    commitment: NonNegativeFloat = 0.25  # vq only
    # Stage II: E_prior
    prior_width: PositiveInt = 16
    prior_enc_blocks: list[NonNegativeInt] = Field(default_factory=lambda: [1, 1, 1], min_length=1)
    prior_middle_blocks: NonNegativeInt = 1
    prior_loss: Literal["grading", "ce"] = "grading"  # vq always ce, continuous l1
    # grading BCE: the mean over all bits | each dimension's mean first, then over dimensions (release)
    grading_mean: Literal["bits", "dimensions"] = "bits"
    prior_availability: bool = False  # E_prior also sees the availability bits as constant planes (as the regressor)
    prior_decode: Literal["hard", "expected"] = "hard"  # what D_a decodes: the grading count (paper) | sum_j j P(level = j)
    finetune_decoder: bool = False  # Stage II keeps its own copy of D_a, trained to decode the predicted codes
    # PatchGAN. pix2pix: D judges D_a's output alone, one logit per patch. release: D judges the composite
    # rec x (1 - m) + image x m beside the full real stack, one logit per contrast and patch (target: m)
    discriminator: Literal["pix2pix", "release"] = "pix2pix"
    disc_width: PositiveInt = 64
    disc_layers: PositiveInt = 3  # pix2pix: layers after the first (the last at stride 1); release: stride-2 layers

    @model_validator(mode="after")
    def per_dimension_levels(self) -> "ModelConfig":
        """levels: L becomes [L] * code_dim; a list sets code_dim. Then the checks across keys."""
        if isinstance(self.levels, int):
            self.levels = [self.levels] * self.code_dim
        self.code_dim = len(self.levels)
        if self.finetune_decoder and self.joint_code:
            raise ValueError("finetune_decoder: needs a code map per contrast (joint_code is on)")
        if len(self.dec_blocks) != len(self.enc_blocks):
            raise ValueError("dec_blocks: must have one entry per encoder level (enc_blocks)")
        if self.discriminator == "release" and not self.joint_code:
            raise ValueError("discriminator: release judges every contrast at once (needs joint_code)")
        if self.decoder == "unet" and self.common_features and self.common_width not in (0, self.width):
            raise ValueError("common_width: must equal width with the unet decoder (additive skips)")
        return self

    @property
    def n_code_maps(self) -> int:
        """Code maps per slice: one per contrast (paper) or one joint map (release)."""
        return 1 if self.joint_code else len(self.contrasts)

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.enc_blocks)

    @classmethod
    def from_dict(cls, section: dict) -> "ModelConfig":
        """A saved model_config (a checkpoint's), older ones included: retired keys are dropped."""
        if section.get("decoder") == "wide":
            raise ValueError("decoder 'wide' (protocol release before issue 28) is retired: its checkpoints cannot be "
                             "rebuilt; retrain with decoder: release")
        return cls.model_validate({k: v for k, v in section.items() if k not in RETIRED_FIELDS})

    def to_dict(self) -> dict:
        return self.model_dump()

