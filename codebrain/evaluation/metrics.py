"""Per-slice image metrics as the paper computes them: PSNR (data range 1), SSIM x 100, MAE x 1000.

Batched torch versions (they run on the training device). SSIM is the one behind the paper's and the
authors' release's tables: torchmetrics' structural_similarity_index_measure with its defaults (>= 1.5), i.e. an
11 x 11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, population covariance, the image reflect-padded by 5
so that the SSIM map covers every pixel, and the mean over the whole map. Inside the border it is scikit-image's
structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False), which averages the interior
only; neither is scikit-image's default 7 x 7 uniform window. The tests check all three numbers against
scikit-image and SSIM against torchmetrics. With a brain mask, the mean runs over the mask only.
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


def gaussian_1d(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """k normalised Gaussian weights, k = 2 * int(truncate * sigma + 0.5) + 1 (11 for sigma 1.5)."""
    radius = int(truncate * sigma + 0.5)
    g = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    return g / g.sum()


def ssim_index(x: torch.Tensor, y: torch.Tensor, local_mean, data_range: float) -> torch.Tensor:
    """SSIM's formula on the local means, variances (population, floored at 0) and covariance that `local_mean`
    (a normalised window, 2D or 3D) gives."""
    ux, uy = local_mean(x), local_mean(y)
    vx = (local_mean(x * x) - ux * ux).clamp_min(0)
    vy = (local_mean(y * y) - uy * uy).clamp_min(0)
    vxy = local_mean(x * y) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))


def ssim_map(prediction, target, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """B x H x W -> B x H x W local SSIM (module docstring); the prediction is clamped to [0, data_range]."""
    g = gaussian_1d(sigma).to(target.device)
    window = (g[:, None] * g[None, :])[None, None]  # 1 x 1 x 11 x 11
    pad = (len(g) - 1) // 2
    x = F.pad(prediction.float().clamp(0, data_range)[:, None], (pad,) * 4, mode="reflect")
    y = F.pad(target.float()[:, None], (pad,) * 4, mode="reflect")
    # the padding gives every pixel its window: B x 1 x H x W
    return ssim_index(x, y, lambda t: F.conv2d(t, window), data_range)[:, 0]


def ssim(prediction, target, mask=None, data_range: float = 1.0) -> torch.Tensor:
    """B x H x W -> B: the SSIM map's mean over the image or the mask."""
    return _masked_mean(ssim_map(prediction, target, data_range), mask)


def slice_metrics(prediction, target, mask=None) -> dict[str, torch.Tensor]:
    """The paper's three numbers per slice, in its units."""
    return {"psnr": psnr(prediction, target, mask), "ssim": 100 * ssim(prediction, target, mask),
            "mae": 1000 * mae(prediction, target, mask)}
