"""Segmentation evaluation (Table 4): Dice against MONAI's, a U-Net trained on real slices, every
N-1 -> 1 scenario zero-filled / imputed / real, and the CLI's refusals."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import CONTRASTS, MODEL, make_store, run_cli

from codebrain.evaluation.segmentation import dice, dice_2d_3d


def test_dice_is_overlap_over_sizes_and_skips_empty_slices():
    rng = np.random.default_rng(0)
    prediction, truth = rng.random((7, 12, 12)) > 0.6, rng.random((7, 12, 12)) > 0.5
    prediction[5], truth[5] = False, False  # both empty: no score, not a perfect one
    truth[6] = False  # a tumour found where there is none: 0
    ours = dice(prediction, truth)
    by_hand = [2 * (p & t).sum() / (p.sum() + t.sum()) for p, t in zip(prediction[:5], truth[:5])]
    np.testing.assert_allclose(ours[:5], by_hand, rtol=1e-6)
    assert np.isnan(ours[5]) and ours[6] == 0
    prediction, truth, ours = prediction[:6], truth[:6], ours[:6]
    subjects = np.array(["a", "a", "a", "b", "b", "b"])
    two_d, three_d = dice_2d_3d(prediction, truth, subjects)
    assert two_d == pytest.approx(np.nanmean(ours))
    volume_a = 2 * (prediction[:3] & truth[:3]).sum() / (prediction[:3].sum() + truth[:3].sum())
    volume_b = 2 * (prediction[3:] & truth[3:]).sum() / (prediction[3:].sum() + truth[3:].sum())
    assert three_d == pytest.approx((volume_a + volume_b) / 2)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segmentation")
    store = make_store(tmp / "store", n_train=32, n_val=8, size=16, seed=3, tumours=True)
    run_cli("train-segmenter", "--store", store, "--out", tmp / "segmenter.pt", "--contrasts", *CONTRASTS,
        "--config", json.dumps({"channels": [8, 16], "steps": 150, "batch_size": 8, "lr": 3e-3}),
        "--results", tmp, "--dataset", "synthetic", "--run-record", tmp / "segmenter.run.json")
    direct = {"method": "direct", "model": {k: MODEL[k] for k in ("width", "enc_blocks", "dec_blocks", "middle_blocks")},
              "train": {"steps": 4, "batch_size": 4, "validate_every": 4}}
    run_cli("train-direct", "--store", store, "--out", tmp / "direct.pt", "--contrasts", *CONTRASTS,
        "--config", json.dumps(direct), "--results", tmp, "--dataset", "synthetic")
    return tmp, store


def test_segmenter_learns_the_tumour_and_every_missing_contrast_is_scored(labelled):
    tmp, store = labelled
    assert torch.load(tmp / "segmenter.pt", weights_only=True)["metrics"]["val/dice_wt_2d"] > 0.5
    run_cli("evaluate-segmentation", "--segmenter", tmp / "segmenter.pt", "--model", f"direct={tmp / 'direct.pt'}",
        "--store", store, "--out-dir", tmp / "seg", "--contrasts", *CONTRASTS, "--results", tmp,
        "--dataset", "synthetic")
    table = pd.read_csv(tmp / "seg" / "dice.csv", dtype={"scenario": str})
    assert len(table) == 3 * 3  # each missing contrast x (zero-filled, direct, all real)
    assert sorted(table.scenario.unique()) == ["011", "101", "110"]
    real = table[table.method == "all real"]
    assert (real.dice_3d_vs_full == 1).all() and (real.dice_3d > 0.5).all()
    # the tumour shows in the first contrast only: zero-filling it loses the tumour, the others barely matter
    zero = table[table.method == "zero-filled"].set_index("missing")
    assert zero.loc["T1", "dice_3d"] < real.dice_3d.iloc[0] - 0.3
    assert "| direct (Seg.) |" in (tmp / "seg" / "dice.md").read_text()


def test_segmentation_refusals_name_the_problem(labelled, tmp_path):
    tmp, store = labelled
    unlabelled = make_store(tmp_path / "plain")
    result = run_cli("train-segmenter", "--store", unlabelled, "--out", tmp_path / "s.pt", "--contrasts", *CONTRASTS,
                 "--results", tmp_path, check=False)
    assert result.returncode == 2 and "train_labels.npy" in result.stderr and "no labels" in result.stderr
    result = run_cli("evaluate-segmentation", "--segmenter", tmp / "segmenter.pt", "--model", "direct",
                 "--store", store, "--out-dir", tmp_path, "--contrasts", *CONTRASTS, "--results", tmp_path, check=False)
    assert result.returncode == 2 and "NAME=PATH" in result.stderr
    result = run_cli("evaluate-segmentation", "--segmenter", tmp / "direct.pt", "--store", store, "--out-dir", tmp_path,
                 "--contrasts", *CONTRASTS, "--results", tmp_path, check=False)
    assert result.returncode == 2 and "'direct' checkpoint, expected 'segmenter'" in result.stderr
