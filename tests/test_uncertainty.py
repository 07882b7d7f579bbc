"""Uncertainty samples from E_prior's level distributions, and their calibration against the error."""

import numpy as np
import pytest
import torch

from codebrain.evaluation.uncertainty import calibration, sample_imputations
from codebrain.models.config import ModelConfig
from codebrain.models.grading import (ClassTarget, GradingTarget, bits_to_distribution, bits_to_level,
                                      level_to_bits, sample_levels)
from codebrain.models.prior import CodePrior
from codebrain.models.reconstructor import Reconstructor
from helpers import MODEL


def test_grading_distribution_by_hand():
    """Bits P(level > j) = 0.9, 0.6, 0.2 for L = 4: P(level = j) = 0.1, 0.3, 0.4, 0.2; the hard count (2 bits above
    0.5) is its median."""
    logits = torch.logit(torch.tensor([0.9, 0.6, 0.2]))[None, :, None, None]
    distribution = bits_to_distribution(logits)[0, :, 0, 0]
    assert torch.allclose(distribution, torch.tensor([0.1, 0.3, 0.4, 0.2]), atol=1e-6)
    assert bits_to_level(logits).item() == 2 and distribution.cumsum(0)[1] < 0.5 <= distribution.cumsum(0)[2]


def test_non_monotone_bits_still_give_a_distribution():
    logits = torch.randn(5, 4, 3, 3) * 4  # bits in any order
    distribution = bits_to_distribution(logits)
    assert (distribution >= 0).all() and torch.allclose(distribution.sum(1), torch.ones(5, 3, 3))


@pytest.mark.parametrize("target", [GradingTarget([5, 5, 3]), ClassTarget([5, 5, 3])])
def test_distributions_sum_to_one_and_peak_at_the_hard_code(target):
    codes = torch.stack([torch.randint(0, n, (2, 4, 4)) for n in target.levels], 1)
    if isinstance(target, GradingTarget):  # confident logits of the true bits
        logits = torch.cat([(2 * level_to_bits(codes[:, i], n) - 1) * 8 for i, n in enumerate(target.levels)], 1)
    else:
        logits = torch.cat([torch.nn.functional.one_hot(codes[:, i], n).permute(0, 3, 1, 2).float() * 16
                            for i, n in enumerate(target.levels)], 1)
    distribution = target.distribution(logits)  # B x d x max(L) x h x w
    assert torch.allclose(distribution.sum(2), torch.ones(2, 3, 4, 4), atol=1e-5)
    assert (distribution[:, 2, 3:] == 0).all()  # beyond the third dimension's 3 levels
    assert torch.equal(distribution.argmax(2), target.predict(logits).long())
    assert torch.equal(target.predict(logits).long(), codes)


def test_sampling_follows_the_distribution_and_is_seeded():
    distribution = torch.tensor([0.1, 0.3, 0.4, 0.2])[None, None, :, None, None].expand(1, 1, 4, 50, 50)
    first = sample_levels(distribution, 40, torch.Generator().manual_seed(3))
    again = sample_levels(distribution, 40, torch.Generator().manual_seed(3))
    assert first.shape == (40, 1, 1, 50, 50) and torch.equal(first, again)
    frequencies = torch.bincount(first.flatten().long(), minlength=4).float() / first.numel()
    assert torch.allclose(frequencies, torch.tensor([0.1, 0.3, 0.4, 0.2]), atol=0.01)


def test_a_certain_prior_gives_zero_std_and_the_hard_image():
    """With certain logits (the bits of given codes at +-20) every sample is the hard code: std 0, mean = hard;
    with all-zero logits (every bit at 0.5) the samples differ; the same seed gives the same std."""
    cfg = ModelConfig.from_dict({**MODEL, "contrasts": ["T1", "T2", "PD"]})
    torch.manual_seed(0)
    stage1, prior = Reconstructor(cfg).eval(), CodePrior(cfg).eval()
    image, available = torch.rand(2, 3, 16, 16), np.array([True, False, False])
    h = 16 // cfg.downsampling
    codes = torch.randint(0, cfg.levels[0], (2 * cfg.n_code_maps, cfg.code_dim, h, h))
    bits = torch.cat([level_to_bits(codes[:, i], n) for i, n in enumerate(cfg.levels)], 1)
    certain = ((2 * bits - 1) * 20).unflatten(0, (2, cfg.n_code_maps))  # B x maps x channels x h x w
    prior.forward = lambda masked, scenario_mask: certain
    result = sample_imputations(stage1, prior, image, available, samples=6, seed=1)
    assert torch.count_nonzero(result["std"]) == 0
    assert torch.allclose(result["mean"], result["hard"]) and torch.equal(result["hard"][:, 0], image[:, 0])
    prior.forward = lambda masked, scenario_mask: torch.zeros_like(certain)
    unsure = sample_imputations(stage1, prior, image, available, samples=6, seed=1)
    assert (unsure["std"][:, 1:] > 0).any() and torch.count_nonzero(unsure["std"][:, 0]) == 0
    assert torch.equal(unsure["std"], sample_imputations(stage1, prior, image, available, samples=6, seed=1)["std"])


def test_calibration_by_hand():
    rng = np.random.default_rng(0)
    std = rng.random(10_000)
    error = std * 2 + rng.random(10_000) * 0.1  # error grows with std
    report = calibration(std, error)
    assert report["spearman"] > 0.95 and report["top_decile_error_ratio"] > 2
    top = std >= np.quantile(std, 0.9)
    assert report["top_decile_error_ratio"] == pytest.approx(error[top].mean() / error[~top].mean())
    curve_std, curve_error = zip(*report["reliability"])
    assert len(curve_std) == 10 and np.all(np.diff(curve_error) > 0)
    assert calibration(std, rng.permutation(error))["spearman"] == pytest.approx(0, abs=0.05)


def test_every_scenario_and_target_is_calibrated_with_tumour_and_healthy_std(tmp_path):
    from codebrain.data.dataset import open_store
    from codebrain.evaluation.uncertainty import evaluate_uncertainty
    from helpers import CONTRASTS, make_store

    store = make_store(tmp_path / "store", n_val=8, tumours=True)
    slices, _ = open_store(store, "test", CONTRASTS)
    cfg = ModelConfig.from_dict({**MODEL, "contrasts": CONTRASTS})
    torch.manual_seed(0)
    table = evaluate_uncertainty(Reconstructor(cfg).eval(), CodePrior(cfg).eval(), slices, CONTRASTS, "cpu",
                                 samples=4, batch_size=3, labels=np.load(store / "test_labels.npy"))
    assert len(table) == 9 and set(table.target) == set(CONTRASTS)  # 6 scenarios of 3 contrasts, 9 pairs
    assert table[["spearman", "top_decile_error_ratio", "mean_std", "std_tumour", "std_healthy"]].notna().all().all()
    assert (table.mean_std > 0).all() and table.reliability.str.count(":").ge(2).all()


def test_the_dag_writes_calibration_for_codebrain_models_only(workdir):
    """evaluation.uncertainty_samples (default 8): the FSQ experiment gets uncertainty.csv and its figure; the
    direct regressor, which has no code distribution, does not."""
    import pandas as pd

    metrics = workdir[0] / "results" / "tiny" / "metrics"
    table = pd.read_csv(metrics / "codebrain" / "uncertainty.csv", dtype={"scenario": str})
    assert len(table) == 9 and (metrics / "codebrain" / "uncertainty.png").exists()
    assert not (metrics / "direct" / "uncertainty.csv").exists()


def test_the_exemplar_figure_gets_a_std_row_per_target(tmp_path):
    """Two rows per target (image, error) without samples, three with (the std of the sampled decodings)."""
    import matplotlib.pyplot as plt

    from codebrain.evaluation.evaluate import exemplar_figure
    from codebrain.evaluation.scenarios import CodeBrainImputer

    torch.manual_seed(0)
    cfg = ModelConfig(contrasts=["T1", "T2", "PD"], **MODEL)
    imputer = CodeBrainImputer(Reconstructor(cfg), CodePrior(cfg))
    slices = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    heights = {}
    for samples in (0, 2):
        exemplar_figure(imputer, "stage2", slices, ["T1", "T2", "PD"], tmp_path / f"{samples}.png", 1, samples)
        heights[samples] = plt.imread(tmp_path / f"{samples}.png").shape[0]
    assert heights[2] / heights[0] == pytest.approx(9 / 6, rel=0.02)


@pytest.mark.slow
def test_the_signals_bench_reproduces_the_dags_calibration_and_scores_every_signal(workdir, tmp_path):
    """bench/uncertainty_signals.py (issue 16's comparison of error signals): its `std` signal is the DAG's
    uncertainty map, so on the test split with the evaluation's batch size and K it gives uncertainty.csv's
    Spearman per pair; every other signal is scored on every pair."""
    import subprocess
    import sys

    import pandas as pd

    from helpers import REPO

    results = workdir[0] / "results" / "tiny"
    out = tmp_path / "signals.csv"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "uncertainty_signals.py"),
                          str(results / "models" / "codebrain" / "stage2.pt"), str(results / "slices"),
                          "--split", "test", "--batch-size", "32", "--samples", "8", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    signals = pd.read_csv(out, dtype={"scenario": str})
    assert set(signals.signal) == {"std", "std_T2", "dev_hard", "flip_std", "given_prior", "given_stage1"}
    assert (signals.groupby("signal").size() == 9).all()
    shipped = pd.read_csv(results / "metrics" / "codebrain" / "uncertainty.csv", dtype={"scenario": str})
    mine = signals[signals.signal == "std"].merge(shipped, on=["scenario", "target"], suffixes=("", "_dag"))
    assert len(mine) == 9
    assert np.allclose(mine.spearman, mine.spearman_dag, atol=2e-3, equal_nan=True)
