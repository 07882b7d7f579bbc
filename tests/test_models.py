"""Model invariants: FSQ, grading, PSNR loss, sizes, modality-agnostic forward."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from codebrain.evaluation.scenarios import all_scenarios
from codebrain.models.config import ModelConfig
from codebrain.models.fsq import FSQ
from codebrain.models.grading import ClassTarget, GradingTarget, bits_to_level, level_to_bits
from codebrain.models.losses import psnr_loss
from codebrain.models.prior import CodePrior
from codebrain.models.quantisers import Continuous, VectorQuantiser
from codebrain.models.reconstructor import Reconstructor
from helpers import MODEL

TINY = dict(width=4, enc_blocks=[1, 1], dec_blocks=[1, 1], middle_blocks=1, code_dim=3, prior_width=4,
            prior_enc_blocks=[1, 1], prior_middle_blocks=1)


@pytest.mark.parametrize("levels", [[5], [8], [2], [4], [8, 8, 8, 5, 5, 5], [3, 6]])
def test_fsq_hits_exactly_l_levels_in_range(levels):
    fsq = FSQ(levels)
    z = torch.linspace(-20, 20, 4001).view(1, 1, -1, 1).repeat(1, len(levels), 1, 1)
    latent, codes, loss = fsq(z)
    for i, n in enumerate(levels):
        assert sorted(codes[0, i].unique().tolist()) == list(range(n))  # every level, nothing outside [0, L)
        assert latent[0, i].abs().max() <= 1.0 + 1e-6
    assert loss.item() == 0.0


def test_fsq_code_by_hand():
    """Odd L: Z = (L-1)/2 (1+eps) tanh(z); even L: shifted by half a step. Levels counted from the bottom."""
    fsq = FSQ([5, 8])
    z = torch.tensor([0.5, 0.0]).view(1, 2, 1, 1)
    _, codes, _ = fsq(z)
    # L=5: 2.002 * tanh(0.5) = 0.925 -> round 1 -> level 1 + 2 = 3
    # L=8: tanh(0 + atanh(0.5/3.5035)) * 3.5035 - 0.5 = 0 -> round 0 -> level 0 + 4 = 4
    assert codes.flatten().tolist() == [3, 4]
    assert fsq.levels_to_indices(codes).item() == 3 + 4 * 5


@pytest.mark.parametrize("level", [2, 5, 8])
def test_fsq_bound_is_the_docstrings_formula(level):
    """Z = h tanh(F + s) - o, h = (1 + eps)(L - 1)/2, o = 1/2 for even L, s = atanh(o / h), in numpy."""
    eps, f = 1e-3, np.linspace(-4, 4, 33)
    h, o = (1 + eps) * (level - 1) / 2, 0.5 * (level % 2 == 0)
    expected = h * np.tanh(f + np.arctanh(o / h)) - o
    found = FSQ([level], eps).bound(torch.tensor(f, dtype=torch.float64).view(1, 1, -1, 1)).flatten().numpy()
    np.testing.assert_allclose(found, expected, atol=1e-5)  # the levels buffer is float32
    assert abs(expected[16]) < 1e-12  # F = 0 gives Z = 0


def test_fsq_straight_through_gradient_is_the_bound_gradient():
    fsq = FSQ([5, 8])
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    latent, _, _ = fsq(z)
    latent.sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (fsq.bound(z2) / fsq.levels.view(1, -1, 1, 1).div(2, rounding_mode="floor")).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    assert (z.grad != 0).all()


@pytest.mark.parametrize("levels", [[5, 5, 5], [8, 8, 8, 5, 5, 5], [2, 3, 4]])
def test_fsq_index_round_trip(levels):
    fsq = FSQ(levels)
    size = math.prod(levels)
    indices = torch.arange(size).view(1, 1, size)
    codes = fsq.indices_to_levels(indices)
    assert torch.equal(fsq.levels_to_indices(codes), indices)
    assert fsq.codebook_size == size
    z = torch.randn(4, len(levels), 5, 5) * 3
    latent, codes, _ = fsq(z)
    assert torch.equal(fsq.indices_to_levels(fsq.levels_to_indices(codes)), codes)
    torch.testing.assert_close(fsq.codes_to_latent(codes), latent)


def test_fsq_stays_float32_under_bf16_autocast():
    fsq = FSQ([8, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latent, _, _ = fsq(torch.randn(1, 2, 4, 4).bfloat16())
    assert latent.dtype == torch.float32


@pytest.mark.parametrize("n_levels", [2, 3, 5, 8])
def test_grading_round_trip_for_every_level(n_levels):
    levels = torch.arange(n_levels).view(1, 1, n_levels)
    bits = level_to_bits(levels, n_levels)  # 1 x (L-1) x 1 x L
    assert bits.shape[1] == n_levels - 1
    assert bits.sum(1).flatten().tolist() == list(range(n_levels))  # level y has y leading ones
    assert torch.equal(bits_to_level(bits * 20 - 10), levels)


@pytest.mark.parametrize("target_kind", [GradingTarget, ClassTarget])
def test_code_target_predicts_codes_from_confident_logits(target_kind):
    levels = [5, 8, 2]
    target = target_kind(levels)
    codes = torch.stack([torch.randint(0, n, (2, 4, 4)) for n in levels], 1).to(torch.uint8)
    if target_kind is GradingTarget:
        logits = torch.cat([level_to_bits(codes[:, i], n) for i, n in enumerate(levels)], 1) * 40 - 20
    else:
        logits = torch.cat([torch.nn.functional.one_hot(codes[:, i].long(), n).permute(0, 3, 1, 2).float() * 40
                            for i, n in enumerate(levels)], 1)
    assert logits.shape[1] == target.channels
    assert torch.equal(target.predict(logits), codes)
    assert target.loss(logits, codes).shape == (2,)  # one loss per code map
    assert target.loss(logits, codes).max() < 1e-6
    assert target.loss(-logits, codes).min() > 1.0


def test_grading_penalises_far_misses_more_than_near_ones():
    target = GradingTarget([5])
    truth = torch.full((1, 1, 1, 1), 2, dtype=torch.uint8)
    near = level_to_bits(torch.full((1, 1, 1), 3), 5) * 20 - 10
    far = level_to_bits(torch.full((1, 1, 1), 4), 5) * 20 - 10
    assert target.loss(far, truth) > target.loss(near, truth)


def test_code_loss_weighting_toward_missing_maps():
    """map_weights: a weighted mean of the per-map losses, computed here from the unweighted ones."""
    cfg = ModelConfig(contrasts=["T1", "T2", "PD"], width=4, enc_blocks=[1], dec_blocks=[1], code_dim=2, levels=5,
                      prior_width=4, prior_enc_blocks=[1])
    prior = CodePrior(cfg)
    logits = torch.randn(2, 3, prior.target.channels, 4, 4)
    codes = torch.randint(0, 5, (2, 3, 2, 4, 4), dtype=torch.uint8)
    per_map = prior.target.loss(logits.flatten(0, 1), codes.flatten(0, 1)).view(2, 3)
    assert prior.loss(logits, codes) == pytest.approx(per_map.mean().item())
    weights = torch.tensor([[1.0, 4.0, 1.0], [4.0, 4.0, 1.0]])
    expected = (per_map * weights).sum() / weights.sum()
    assert prior.loss(logits, codes, weights) == pytest.approx(expected.item())


def test_prior_with_availability_bits_tells_scenarios_apart():
    """Two scenarios whose masked stacks are equal (an all-zero given contrast) differ only in their bits."""
    cfg = ModelConfig(contrasts=["T1", "T2"], width=4, enc_blocks=[1], dec_blocks=[1], code_dim=2, levels=5,
                      prior_width=4, prior_enc_blocks=[1], prior_availability=True)
    torch.manual_seed(0)
    prior = CodePrior(cfg)
    masked = torch.zeros(1, 2, 8, 8)
    masked[:, 0] = torch.rand(8, 8)
    one, both = torch.tensor([[True, False]]), torch.tensor([[True, True]])
    assert not torch.allclose(prior(masked, one), prior(masked, both))
    plain = CodePrior(ModelConfig(**{**cfg.to_dict(), "prior_availability": False}))
    assert torch.equal(plain(masked, one), plain(masked, both))
    assert prior.encoder.intro.in_channels == 2 * plain.encoder.intro.in_channels == 4


def test_expected_level_decoding_is_the_mean_of_the_level_distribution():
    """prior_decode: expected gives sum_j j P(level = j), computed here by hand from the grading bits."""
    cfg = ModelConfig(contrasts=["T1", "T2"], width=4, enc_blocks=[1], dec_blocks=[1], code_dim=1, levels=3,
                      prior_width=4, prior_enc_blocks=[1], prior_decode="expected")
    prior = CodePrior(cfg)
    logits = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1, 1)  # P(level > 0) = 0.5, P(level > 1) = sigmoid(1) -> 0.5
    above = torch.sigmoid(torch.tensor([0.0, 1.0])).cummin(0).values  # made monotone: 0.5, 0.5
    expected = above.sum()  # E[level] = sum_j P(level > j)
    assert prior.decoded_codes(logits).item() == pytest.approx(expected.item())
    hard = CodePrior(ModelConfig(**{**cfg.to_dict(), "prior_decode": "hard"}))
    assert torch.equal(hard.decoded_codes(logits), hard.predict(logits))
    with pytest.raises(ValueError, match="prior_decode"):
        ModelConfig(prior_decode="mean")


def test_decoder_without_skips_ignores_the_common_features_skips():
    """decoder_skips: False: changing E_s's skip tensors leaves D_a's output unchanged; with skips it changes."""
    for skips, changes in ((True, True), (False, False)):
        torch.manual_seed(0)
        model = Reconstructor(ModelConfig(contrasts=["T1", "T2"], width=4, enc_blocks=[1, 1], dec_blocks=[1, 1],
                                          code_dim=2, levels=5, decoder_skips=skips))
        latent = torch.randn(1, 2, 2, 2)
        common_skips, bottleneck = model.common_features(torch.rand(1, 2, 8, 8))
        out = model.decoder(latent, (common_skips, bottleneck))
        moved = model.decoder(latent, ([s + 1 for s in common_skips], bottleneck))
        assert (not torch.allclose(out, moved)) == changes


def test_psnr_loss_is_minus_psnr():
    rng = np.random.default_rng(0)
    target = rng.random((3, 1, 16, 16)).astype(np.float32)
    prediction = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    expected = np.mean([peak_signal_noise_ratio(t[0], p[0], data_range=1.0) for t, p in zip(target, prediction)])
    loss = psnr_loss(torch.from_numpy(prediction), torch.from_numpy(target))
    assert loss.item() == pytest.approx(-expected, abs=1e-3)


def test_psnr_loss_weights_per_channel():
    target = torch.zeros(1, 2, 8, 8)
    prediction = torch.stack([torch.full((8, 8), 0.1), torch.full((8, 8), 0.01)])[None]
    per_channel = [10 * math.log10(0.1 ** 2), 10 * math.log10(0.01 ** 2)]
    weighted = psnr_loss(prediction, target, torch.tensor([[5.0, 20.0]]))
    assert weighted.item() == pytest.approx(5 * per_channel[0] + 20 * per_channel[1], rel=1e-4)


def test_paper_config_has_the_papers_size():
    from codebrain.models.complexity import complexity
    import yaml

    section = yaml.safe_load(open("config/models/paper.yaml"))["model"]
    params, macs = complexity(ModelConfig.from_dict(section), 256)["total"]
    assert params == pytest.approx(134.56e6, rel=0.02)
    assert macs == pytest.approx(157.82e9, rel=0.02)


@pytest.mark.parametrize("contrasts", [["T1", "T2", "PD"], ["T1", "T1Gd", "T2", "FLAIR"]])
@pytest.mark.parametrize("variant", [{}, {"common_features": False}, {"quantiser": "vq", "codebook_size": 16},
                                     {"quantiser": "continuous"}, {"prior_loss": "ce"},
                                     {"joint_code": True, "decoder": "release", "decoder_width": 16,
                                      "decoder_blocks": 1, "levels": [8, 5, 5]}])
def test_forward_for_every_scenario_and_anchor(contrasts, variant):
    cfg = ModelConfig(contrasts=contrasts, **{**TINY, **variant})
    stage1, prior = Reconstructor(cfg), CodePrior(cfg)
    n = len(contrasts)
    image = torch.rand(1, n, 16, 16)
    for available in all_scenarios(n):
        for anchor in np.flatnonzero(~available):
            mask = torch.from_numpy(available)[None]
            output, codes, _ = stage1(image, mask, torch.tensor([anchor]))
            assert output.shape == (1, n if cfg.joint_code else 1, 16, 16)
            assert torch.isfinite(output).all()
            logits = prior(image * mask[:, :, None, None], mask)
            assert prior.predict(logits).shape[:2] == (1, cfg.n_code_maps)


def test_no_module_per_contrast():
    """A fourth contrast adds only one input channel to E_s's first 3x3 conv: no per-contrast module anywhere."""
    def n_params(contrasts):
        return sum(p.numel() for p in Reconstructor(ModelConfig(contrasts=contrasts, **TINY)).parameters())

    assert n_params(["T1", "T2", "PD", "FLAIR"]) - n_params(["T1", "T2", "PD"]) == TINY["width"] * 3 * 3


def test_posterior_is_shared_by_all_contrasts():
    """A contrast's code does not depend on its channel position: the same image gives the same code anywhere."""
    stage1 = Reconstructor(ModelConfig(**TINY)).eval()
    scan = torch.rand(16, 16)
    stack_a = torch.stack([scan, torch.rand(16, 16), torch.rand(16, 16)])[None]
    stack_b = torch.stack([torch.rand(16, 16), torch.rand(16, 16), scan])[None]
    with torch.no_grad():
        assert torch.equal(stage1.encode(stack_a)[0, 0], stage1.encode(stack_b)[0, 2])


def test_vq_and_continuous_codes_map_back_to_their_latents():
    vq = VectorQuantiser(3, 8)
    z = torch.randn(2, 3, 4, 4)
    latent, codes, loss = vq(z)
    assert codes.shape == (2, 1, 4, 4) and int(codes.max()) < 8 and loss.item() > 0
    torch.testing.assert_close(vq.codes_to_latent(codes), latent)
    continuous = Continuous(3)
    latent, codes, _ = continuous(z)
    torch.testing.assert_close(continuous.codes_to_latent(codes), latent)


def test_metrics_match_scikit_image():
    from skimage.metrics import structural_similarity

    from codebrain.evaluation.metrics import slice_metrics, ssim_map

    rng = np.random.default_rng(1)
    target = rng.random((3, 24, 20)).astype(np.float32)
    prediction = (target + rng.normal(0, 0.1, target.shape)).astype(np.float32)  # some values outside [0, 1]
    clamped = np.clip(prediction, 0, 1)
    ours = slice_metrics(torch.from_numpy(prediction), torch.from_numpy(target))
    for i in range(3):
        assert ours["psnr"][i].item() == pytest.approx(
            peak_signal_noise_ratio(target[i], clamped[i], data_range=1.0), abs=1e-3)
        # inside the border, the paper's SSIM is scikit-image's Gaussian one (11 x 11, sigma 1.5, population
        # covariance), which averages the interior only
        interior = ssim_map(torch.from_numpy(prediction[i:i + 1]), torch.from_numpy(target[i:i + 1]))[0, 5:-5, 5:-5]
        assert 100 * interior.mean().item() == pytest.approx(100 * structural_similarity(
            target[i], clamped[i], data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
            abs=1e-3)
        assert ours["mae"][i].item() == pytest.approx(1000 * np.abs(clamped[i] - target[i]).mean(), abs=1e-3)
        # scored after clamping to [0, 1], as every output is: the unclamped prediction scores otherwise
        assert ours["psnr"][i].item() != pytest.approx(
            peak_signal_noise_ratio(target[i], prediction[i], data_range=1.0), abs=1e-2)


def test_ssim_matches_torchmetrics():
    """The release's evaluation (utils/metrics_set.py) calls torchmetrics' SSIM with its defaults: the mean over the
    whole reflect-padded map, which differs from scikit-image's mean over the interior in the last digits."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    from skimage.metrics import structural_similarity

    from codebrain.evaluation.metrics import ssim

    rng = np.random.default_rng(2)
    smooth = torch.from_numpy(rng.random((2, 1, 8, 7)).astype(np.float32))
    target = torch.nn.functional.interpolate(smooth, size=(40, 36), mode="bilinear")[:, 0]  # structure, not noise
    prediction = (target + 0.05 * torch.from_numpy(rng.normal(size=target.shape).astype(np.float32))).clamp(0, 1)
    for i in range(2):
        ours = 100 * ssim(prediction[i][None], target[i][None]).item()
        reference = structural_similarity_index_measure(prediction[i][None, None], target[i][None, None],
                                                        data_range=1.0)
        assert ours == pytest.approx(100 * reference.item(), abs=1e-3)
        default_window = 100 * structural_similarity(target[i].numpy(), prediction[i].numpy(), data_range=1.0)
        assert abs(ours - default_window) > 0.5  # not scikit-image's default (7 x 7 uniform, sample covariance)


@pytest.mark.parametrize("config_file", ["config/config.yaml", "config/phantom-ixi.yaml", "config/ixi.yaml",
                                         "config/brats.yaml"])
def test_shipped_configs_validate_and_build(config_file):
    import yaml

    from codebrain.config import validated
    from codebrain.training.config import parse_experiment

    config = validated(yaml.safe_load(open(config_file)))
    for name, section in config["experiments"].items():
        experiment = parse_experiment(section, config["dataset"]["contrasts"])
        size = config["slices"]["size"]
        assert size % experiment.model.downsampling == 0, f"{name}: slices.size {size} vs code downsampling"


def plain_layer_norm(self, x):
    """LayerNorm2d as plain autograd ops: the path before the autograd function, to compare against."""
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + self.eps)
    return self.weight[:, None, None] * x + self.bias[:, None, None]


def stage1_model() -> Reconstructor:
    """A tiny Reconstructor whose norms and residual scales are not at their identity start, so that every
    gradient path carries signal."""
    torch.manual_seed(0)
    model = Reconstructor(ModelConfig.from_dict({**MODEL, "contrasts": ["T1", "T2", "PD"]}))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith(("norm1.bias", "norm2.bias")):
                parameter.uniform_(-0.5, 0.5)
            elif name.endswith(("beta", "gamma")):
                parameter.uniform_(-1, 1)
    return model


def stage1_loss_and_grads(model: Reconstructor) -> tuple[float, torch.Tensor]:
    torch.manual_seed(1)
    image, mask, anchor = torch.rand(2, 3, 16, 16), torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool), torch.tensor([1, 0])
    model.zero_grad()
    reconstruction, _, quantiser_loss = model(image, mask, anchor)
    loss = psnr_loss(reconstruction, image[torch.arange(2), anchor][:, None]) + quantiser_loss
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def assert_same_gradients(grads, expected):
    assert (grads - expected).norm() <= 1e-5 * expected.norm()


def test_layer_norm_function_matches_the_plain_ops(monkeypatch):
    """The autograd function's hand-written backward gives the plain ops' loss and gradients (fp32, relative
    difference <= 1e-5) and passes gradcheck in float64."""
    from codebrain.models.nafnet import LayerNorm2d, LayerNormFunction

    loss, grads = stage1_loss_and_grads(stage1_model())
    with monkeypatch.context() as patch:
        patch.setattr(LayerNorm2d, "forward", plain_layer_norm)
        plain_loss, plain_grads = stage1_loss_and_grads(stage1_model())
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert_same_gradients(grads, plain_grads)

    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: LayerNormFunction.apply(*a, 1e-6), (x, weight, bias))


def test_layer_norm_keeps_one_full_resolution_tensor_for_backward():
    """x_hat (B x C x H x W) and the variance (B x 1 x H x W) are all it keeps; the plain ops keep three
    full-resolution tensors."""
    from codebrain.models.nafnet import LayerNorm2d

    saved = []

    def count(tensor):
        saved.append(tensor.untyped_storage().nbytes() if not isinstance(tensor, torch.nn.Parameter) else 0)
        return tensor

    norm = LayerNorm2d(6)
    x = torch.randn(2, 6, 5, 7, requires_grad=True)
    b, c, h, w = x.shape
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        out = norm(x)
    assert sum(saved) == 4 * (b * c * h * w + b * h * w)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        plain_layer_norm(norm, x)
    assert sum(saved) >= 3 * 4 * b * c * h * w
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("recompute", ["elementwise", "expansions", "blocks"])
def test_recomputation_changes_results_by_nothing(recompute):
    """A Stage I forward + backward with recomputed NAFBlocks gives the plain path's loss and gradients
    (bench/bench_memory.py measures what it saves), and the training config sets the mode on every block."""
    from codebrain.models.nafnet import NAFBlock, set_recompute
    from codebrain.training.config import Experiment
    from codebrain.training.loop import make_accelerator
    from codebrain.training.stage1 import StageOne

    plain_loss, plain_grads = stage1_loss_and_grads(stage1_model())
    model = stage1_model()
    set_recompute(model, recompute)
    assert {m.recompute for m in model.modules() if isinstance(m, NAFBlock)} == {recompute}
    loss, grads = stage1_loss_and_grads(model)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert_same_gradients(grads, plain_grads)
    with pytest.raises(ValueError, match="recompute: 'all' is not one of none, elementwise, expansions, blocks"):
        set_recompute(model, "all")

    experiment = Experiment.from_dict({"model": MODEL, "stage1": {"recompute": recompute}}, ["T1", "T2", "PD"])
    stage = StageOne(experiment, make_accelerator())
    assert {m.recompute for m in stage.model.modules() if isinstance(m, NAFBlock)} == {recompute}


def test_bf16_residual_keeps_the_stream_bf16_and_leaves_fp32_alone():
    """With bf16_residual a NAFBlock's output under bf16 autocast is bf16 (fp32 without it: the fp32 scales promote
    it), Stage I's gradients stay those of fp32 (cosine >= 0.99, check_bf16's bar), and fp32 training is the same
    to the bit. LayerNorm2d computes a bf16 input's statistics in fp32."""
    from codebrain.models.nafnet import LayerNorm2d, NAFBlock, set_bf16_residual

    loss, grads = stage1_loss_and_grads(stage1_model())
    model = stage1_model()
    set_bf16_residual(model, True)
    assert {m.bf16_residual for m in model.modules() if isinstance(m, NAFBlock)} == {True}
    assert stage1_loss_and_grads(model)[0] == loss and torch.equal(stage1_loss_and_grads(model)[1], grads)
    with torch.autocast("cpu", torch.bfloat16):
        _, bf16_grads = stage1_loss_and_grads(model)
    assert torch.nn.functional.cosine_similarity(bf16_grads, grads, dim=0) >= 0.99

    block = NAFBlock(8)
    torch.nn.init.uniform_(block.beta, -1, 1), torch.nn.init.uniform_(block.gamma, -1, 1)
    x = torch.randn(2, 8, 6, 6, dtype=torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        assert block(x).dtype == torch.float32
        block.bf16_residual = True
        assert block(x).dtype == torch.bfloat16

    norm = LayerNorm2d(8)
    x = (torch.randn(2, 8, 5, 5) * 3 + 40).bfloat16()  # a large mean: bf16 statistics lose the variance
    out = norm(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, plain_layer_norm(norm, x.float()))

    from codebrain.training.config import Experiment
    from codebrain.training.loop import make_accelerator
    from codebrain.training.stage1 import StageOne

    experiment = Experiment.from_dict({"model": MODEL, "stage1": {"bf16_residual": True}}, ["T1", "T2", "PD"])
    stage = StageOne(experiment, make_accelerator())
    assert {m.bf16_residual for m in stage.model.modules() if isinstance(m, NAFBlock)} == {True}


def test_a_checkpoint_from_before_the_release_rework_still_rebuilds():
    """Checkpoints saved their whole model_config: one with the retired disc_conditional key rebuilds; one of the
    retired 'wide' decoder is refused by name (its layers no longer exist)."""

    saved = {**ModelConfig(**MODEL).to_dict(), "disc_conditional": False}
    saved.pop("discriminator")
    assert ModelConfig.from_dict(saved).discriminator == "pix2pix"
    with pytest.raises(ValueError, match="decoder 'wide' .* retired"):
        ModelConfig.from_dict({**saved, "decoder": "wide"})


def test_a_training_steps_forward_and_loss_trace_without_a_graph_break():
    """torch.compile sees Stage I's generator loss (recomputed blocks under the selective policy included) and
    Stage II's grading loss as one graph each: regional or whole compilation never falls back to eager there
    (backward is traced from these graphs by AOT autograd)."""
    from codebrain.models.nafnet import set_recompute

    cfg = ModelConfig.from_dict({**MODEL, "contrasts": ["T1", "T2", "PD"]})
    model, prior = Reconstructor(cfg), CodePrior(cfg)
    set_recompute(model, "elementwise")
    image, mask, anchor = torch.rand(2, 3, 16, 16), torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool), torch.tensor([1, 0])
    h = 16 // cfg.downsampling
    codes = (torch.rand(2, cfg.n_code_maps, cfg.code_dim, h, h) * torch.tensor(cfg.levels)[None, None, :, None, None]
             ).to(torch.uint8)

    def stage1_loss(image, mask, anchor):
        reconstruction, _, quantiser_loss = model(image, mask, anchor)
        return psnr_loss(reconstruction, image[torch.arange(2), anchor][:, None]) + quantiser_loss

    def stage2_loss(image, mask, codes):
        return prior.loss(prior(image * mask[:, :, None, None], mask), codes)

    for loss, extra in ((stage1_loss, anchor), (stage2_loss, codes)):
        explained = torch._dynamo.explain(loss)(image, mask, extra)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
