"""The downstream tumour segmenter (the paper's Table 4): MONAI's 2D U-Net over the N contrasts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

N_CLASSES = 4  # background and the BraTS labels 1 (necrosis), 2 (oedema), 3 (enhancing)


@dataclass
class SegmenterConfig:
    contrasts: list[str] = field(default_factory=lambda: ["T1", "T2", "FLAIR", "T1Gd"])
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    res_units: int = 1
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def build_segmenter(cfg: SegmenterConfig):
    """B x N x S x S -> B x N_CLASSES x S x S logits."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=len(cfg.contrasts), out_channels=N_CLASSES, channels=cfg.channels,
                strides=[2] * (len(cfg.channels) - 1), num_res_units=cfg.res_units)
