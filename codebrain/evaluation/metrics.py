"""Per-slice image metrics as the paper computes them: PSNR (data range 1), SSIM x 100, MAE x 1000.

Batched torch versions (they run on the training device); SSIM follows scikit-image's
structural_similarity defaults (7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance,
mean over the window positions that fit inside the image), and the tests check all three
against scikit-image. With a brain mask, the mean runs over the mask only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """B x H x W -> B, over all pixels or the mask's."""
    if mask is None:
        return values.flatten(1).mean(1)
    mask = mask.to(values.dtype)
    return (values * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def psnr(prediction, target, mask=None, data_range: float = 1.0) -> torch.Tensor:
    """B x H x W -> B; the prediction is clamped to [0, data_range] first."""
    mse = _masked_mean((prediction.float().clamp(0, data_range) - target.float()) ** 2, mask)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-10))


def mae(prediction, target, mask=None, data_range: float = 1.0) -> torch.Tensor:
    return _masked_mean((prediction.float().clamp(0, data_range) - target.float()).abs(), mask)


def ssim(prediction, target, mask=None, data_range: float = 1.0, win_size: int = 7) -> torch.Tensor:
    """B x H x W -> B, scikit-image's SSIM with its defaults."""
    x = prediction.float().clamp(0, data_range)[:, None]
    y = target.float()[:, None]
    window = torch.full((1, 1, win_size, win_size), 1.0 / win_size ** 2, device=x.device)

    def local_mean(t):
        return F.conv2d(t, window)  # 'valid': only window positions inside the image

    n = win_size ** 2
    cov_norm = n / (n - 1)
    ux, uy = local_mean(x), local_mean(y)
    vx = cov_norm * (local_mean(x * x) - ux * ux)
    vy = cov_norm * (local_mean(y * y) - uy * uy)
    vxy = cov_norm * (local_mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    cropped_mask = None if mask is None else mask[:, pad: mask.shape[1] - pad, pad: mask.shape[2] - pad]
    return _masked_mean(s[:, 0], cropped_mask)


def slice_metrics(prediction, target, mask=None) -> dict[str, torch.Tensor]:
    """The paper's three numbers per slice, in its units."""
    return {"psnr": psnr(prediction, target, mask), "ssim": 100 * ssim(prediction, target, mask),
            "mae": 1000 * mae(prediction, target, mask)}
