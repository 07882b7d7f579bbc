"""BraSyn's 3D scores against an independent computation: their percentile normalisation written out with numpy
(hongweilibran/BraSyn ssim.py), torchmetrics' 3D SSIM map masked by the tumour and the rest, PSNR by numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from codebrain.evaluation.brasyn import evaluate_volumes, volume_scores


def their_percentile_clip(volume: np.ndarray) -> np.ndarray:
    v_min, v_max = np.percentile(volume, [0.5, 99.5])
    v_min = max(v_min, 0)
    return (np.clip(volume, v_min, v_max) - v_min) / (v_max - v_min)


def phantom_volume(rng, shape=(12, 24, 20)):
    """A smooth blob with a bright core (the tumour), zero outside the brain."""
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    brain = ((z - 6) / 7) ** 2 + ((y - 12) / 11) ** 2 + ((x - 10) / 9) ** 2 < 1
    tumour = ((z - 6) / 3) ** 2 + ((y - 10) / 4) ** 2 + ((x - 9) / 3) ** 2 < 1
    volume = (ndimage.gaussian_filter(rng.random(shape), 2) + 0.8 * tumour) * brain * 1000
    return volume.astype(np.float32), tumour, brain


def test_volume_scores_are_brasyns():
    from torchmetrics.functional.image import structural_similarity_index_measure

    rng = np.random.default_rng(0)
    truth, tumour, brain = phantom_volume(rng)
    prediction = (truth + 60 * rng.normal(size=truth.shape) * brain).astype(np.float32)
    ours = volume_scores(torch.from_numpy(truth), torch.from_numpy(prediction), torch.from_numpy(tumour),
                         torch.from_numpy(brain))
    gt, pred = their_percentile_clip(truth), their_percentile_clip(prediction)
    for name, region in (("ssim_tumour_3d", tumour), ("ssim_outside_3d", ~tumour)):
        masked = [torch.from_numpy((v * region)[None, None]).float() for v in (pred, gt)]
        _, full = structural_similarity_index_measure(*masked, return_full_image=True)
        assert ours[name] == pytest.approx(100 * full[0, 0][torch.from_numpy(region)].mean().item(), abs=1e-3), name
    assert ours["psnr_brain_3d"] == pytest.approx(10 * np.log10(1 / ((pred - gt)[brain] ** 2).mean()), abs=1e-4)
    assert ours["ssim_tumour_3d"] != pytest.approx(ours["ssim_outside_3d"], abs=1e-3)


def test_grid_scores_are_brasyns_inside_the_imputations_box():
    """A volume imputed on a larger grid (zeros around the planes it covers) is scored inside its bounding box:
    torchmetrics' 3D SSIM and numpy's PSNR of the box, not of the whole grid."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from codebrain.evaluation.brasyn import grid_scores

    rng = np.random.default_rng(2)
    truth, tumour, brain = phantom_volume(rng)
    prediction = (truth + 80 * rng.normal(size=truth.shape) * brain + 5).astype(np.float32)  # > 0 in the box
    box = (slice(3, 15), slice(2, 26), slice(4, 24))
    big = [np.zeros((18, 30, 30), dtype) for dtype in (np.float32, np.float32, bool, bool)]
    for array, inner in zip(big, (rng.random(truth.shape) * 900 + truth, prediction, tumour, brain)):
        array[box] = inner
    big[0][:3] = 500.0  # real anatomy outside the imputed planes does not count
    ours = grid_scores(*big)
    gt, pred = their_percentile_clip(big[0][box]), their_percentile_clip(prediction)
    masked = [torch.from_numpy((v * tumour)[None, None]).float() for v in (pred, gt)]
    _, full = structural_similarity_index_measure(*masked, return_full_image=True)
    assert ours["ssim_tumour_3d"] == pytest.approx(100 * full[0, 0][torch.from_numpy(tumour)].mean().item(), abs=1e-3)
    assert ours["psnr_brain_3d"] == pytest.approx(10 * np.log10(1 / ((pred - gt)[brain] ** 2).mean()), abs=1e-4)
    with pytest.raises(ValueError, match="different grids"):
        grid_scores(big[0], big[1][:-1], None, big[3])


def test_too_few_slices_or_no_tumour_give_nan():
    rng = np.random.default_rng(1)
    truth, tumour, brain = (torch.from_numpy(a) for a in phantom_volume(rng))
    thin = volume_scores(truth[:5], truth[:5], tumour[:5], brain[:5])
    assert np.isnan(thin["ssim_tumour_3d"]) and np.isnan(thin["ssim_outside_3d"]) and np.isfinite(thin["psnr_brain_3d"])
    healthy = volume_scores(truth, truth, None, brain)
    assert np.isnan(healthy["ssim_tumour_3d"]) and healthy["ssim_outside_3d"] == pytest.approx(100.0)


def test_evaluate_volumes_scores_each_subjects_stack_and_averages_over_subjects():
    """Two subjects' slices interleaved and out of z order in the store: each volume is its own subject's slices
    in z order; an imputer that returns the truth scores SSIM 100, zero imputation does not, and the mean is over
    subjects."""
    import pandas as pd

    rng = np.random.default_rng(2)
    volumes = [phantom_volume(rng) for _ in range(2)]
    slices = np.concatenate([np.stack([v[0] / v[0].max()] * 3, 1) for v in volumes])  # K x N x S x S each
    labels = np.concatenate([v[1] for v in volumes]).astype(np.uint8)
    rows = pd.DataFrame({"subject": ["a"] * 12 + ["b"] * 12, "z": list(range(40, 52)) * 2})
    order = rng.permutation(24)
    slices, labels, rows = slices[order], labels[order], rows.iloc[order]

    def truthful(image, available):
        return {"direct": image}, {}

    table = evaluate_volumes(truthful, slices, rows, labels, ["T1", "T2", "PD"], "cpu", batch_size=7)
    assert len(table) == 9 * 2  # (scenario, missing target) pairs of 3 contrasts, x zero and direct
    direct, zero = table[table.method == "direct"], table[table.method == "zero"]
    assert np.allclose(direct.ssim_tumour_3d, 100.0) and np.allclose(direct.ssim_outside_3d, 100.0)
    assert (zero.ssim_tumour_3d < 50).all()
    # each subject's volume is scored on its own, in z order: the mean of the two
    per_subject = []
    for v in volumes:
        image = torch.from_numpy(v[0] / v[0].max())
        per_subject.append(volume_scores(image, torch.zeros_like(image), torch.from_numpy(v[1]),
                                         torch.from_numpy(v[2]))["ssim_outside_3d"])
    assert zero.ssim_outside_3d.iloc[0] == pytest.approx(np.mean(per_subject), abs=1e-3)
