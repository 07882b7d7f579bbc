"""The downstream tumour segmenter (the paper's Table 4): MONAI's 2D U-Net over the N contrasts."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

from codebrain.models.config import Contrast

N_CLASSES = 4  # background and the BraTS labels 1 (necrosis), 2 (oedema), 3 (enhancing)


class SegmenterConfig(BaseModel):
    """The tumour U-Net of the Table 4 evaluation: the `segmentation` section, with the dataset's contrasts."""

    model_config = ConfigDict(extra="forbid")

    contrasts: list[Contrast] = ["T1", "T2", "FLAIR", "T1Gd"]
    channels: Annotated[list[PositiveInt], Field(min_length=2)] = [16, 32, 64, 128]
    res_units: NonNegativeInt = 1
    steps: PositiveInt = 600
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 1e-3
    seed: int = 0

    def to_dict(self) -> dict:
        return self.model_dump()


def build_segmenter(cfg: SegmenterConfig):
    """B x N x S x S -> B x N_CLASSES x S x S logits."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=len(cfg.contrasts), out_channels=N_CLASSES, channels=cfg.channels,
                strides=[2] * (len(cfg.channels) - 1), num_res_units=cfg.res_units)
