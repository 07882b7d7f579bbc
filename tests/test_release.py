"""`protocol: release` against the authors' code (GitHub ycwu1997/CodeBrain, CodeBrain/code/): each reference below
is their formula or network written out here from their files, independently of codebrain's implementation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codebrain.models.config import ModelConfig
from codebrain.training.config import Experiment

CONTRASTS = ["T1", "T2", "PD"]


def naf_block_params(c: int) -> int:
    """lib/nafnet.py NAFBlock(c): conv1 c->2c, depthwise 3x3 on 2c, sca 1x1 c->c, conv3 c->c, conv4 c->2c,
    conv5 c->c (all with bias), two LayerNorms (2c each), beta and gamma (c each)."""
    return (c * 2 * c + 2 * c) + (2 * c * 9 + 2 * c) + (c * c + c) + (c * c + c) + (c * 2 * c + 2 * c) \
        + (c * c + c) + 4 * c + 2 * c


def conv_params(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def encoder_params(cin: int, dim: int, depth: int, out: int | None = None) -> int:
    """lib/nafnet.py encoder: 3x3 intro + NAFBlock, then three (2x2 stride-2 conv + NAFBlock), the last with
    `depth` NAFBlocks at 8 x dim, and an optional 1x1 output projection."""
    total = conv_params(cin, dim, 3) + naf_block_params(dim)
    total += conv_params(dim, 2 * dim, 2) + naf_block_params(2 * dim)
    total += conv_params(2 * dim, 4 * dim, 2) + naf_block_params(4 * dim)
    total += conv_params(4 * dim, 8 * dim, 2) + depth * naf_block_params(8 * dim)
    return total + (conv_params(8 * dim, out, 1) if out else 0)


def decoder_2_params(code_dim: int, out: int, dim: int, depth: int) -> int:
    """lib/nafnet.py decoder_2: concat_conv 1x1 (code_dim + 8 dim -> 16 dim), `depth` NAFBlocks at 16 dim, 1x1
    16 dim -> 16 dim + PixelShuffle; NAFBlock(4 dim), 1x1 -> 8 dim + PS; NAFBlock(2 dim), 1x1 -> 4 dim + PS;
    NAFBlock(dim), 3x3 -> out."""
    total = conv_params(code_dim + 8 * dim, 16 * dim, 1) + depth * naf_block_params(16 * dim)
    total += conv_params(16 * dim, 16 * dim, 1)
    total += naf_block_params(4 * dim) + conv_params(4 * dim, 8 * dim, 1)
    total += naf_block_params(2 * dim) + conv_params(2 * dim, 4 * dim, 1)
    return total + naf_block_params(dim) + conv_params(dim, out, 3)


def their_discriminator(n: int) -> nn.Sequential:
    """lib/discriminator.py Discriminator(in_channels=N, out_channels=N) on cat(img_A, img_B)."""
    def block(cin, cout, normalization=True):
        layers = [nn.Conv2d(cin, cout, 4, stride=2, padding=1)]
        if normalization:
            layers.append(nn.InstanceNorm2d(cout))
        return layers + [nn.LeakyReLU(0.2)]

    return nn.Sequential(*block(2 * n, 64, normalization=False), *block(64, 128), *block(128, 256), *block(256, 512),
                         nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(512, n, 4, padding=1, bias=False))


def their_psnr_loss(pred, target, select_list, r_weight=5.0, i_weight=20.0):
    """utils/losses.py PSNRLoss + lib/reconstructor.py train_step: per contrast 10/ln10 log(MSE over (batch, H, W)
    + 1e-8); r_weight x the mean over available + i_weight x the mean over missing."""
    m = torch.as_tensor(select_list, dtype=pred.dtype)
    loss_all = 10 / np.log(10) * torch.log(((pred - target) ** 2).mean(dim=(0, 2, 3)) + 1e-8)
    return r_weight * (loss_all * m).sum() / m.sum() + i_weight * (loss_all * (1 - m)).sum() / (1 - m).sum()


def release_model(**overrides) -> ModelConfig:
    return Experiment.from_dict({"protocol": "release", "model": overrides}, CONTRASTS).model


def test_parameter_counts_are_the_releases():
    """IXI (3 contrasts) at the release's widths: E_posterior 3.14 M, E_s 27.85 M, D_a 104.70 M (Stage I 135.69 M),
    E_prior with its 1x1 head to 33 logits 27.88 M, D 2.77 M."""
    from codebrain.models.complexity import complexity
    from codebrain.models.patchgan import build_discriminator

    cfg = release_model()
    table = complexity(cfg, 64)
    posterior, common = encoder_params(3, 32, 6, out=6), encoder_params(3, 96, 6)
    decoder = decoder_2_params(6, 3, 96, 6)
    grader = encoder_params(3, 96, 6) + conv_params(8 * 96, 7 + 7 + 7 + 4 + 4 + 4, 1)
    assert table["E_posterior"][0] == posterior
    assert table["E_s"][0] == common
    assert table["D_a"][0] == decoder
    assert table["Stage I"][0] == posterior + common + decoder == pytest.approx(135.69e6, abs=0.01e6)
    assert table["Stage II"][0] == table["E_prior"][0] == grader == pytest.approx(27.88e6, abs=0.01e6)
    ours = build_discriminator(cfg)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in their_discriminator(3).parameters())


def test_decoder_gives_every_contrast_at_full_size():
    """A 6 x 32 x 32 code and E_s's 768 x 32 x 32 bottleneck -> 3 x 256 x 256 (on the meta device: no compute)."""
    from codebrain.models.reconstructor import ReleaseDecoder, Reconstructor

    with torch.device("meta"):
        stage1 = Reconstructor(release_model())
        assert isinstance(stage1.decoder, ReleaseDecoder)
        image = torch.zeros(2, 3, 256, 256)
        latent = stage1.posterior(stage1.posterior_input(image, torch.zeros(2, dtype=torch.long)))
        assert latent.shape == (2, 6, 32, 32)
        common = stage1.common_features(image)
        assert common[1].shape == (2, 768, 32, 32)
        assert stage1.decoder(latent, common).shape == (2, 3, 256, 256)


@pytest.mark.parametrize("select_list", [[0, 1, 1], [1, 0, 0], [1, 1, 0]])
def test_pooled_psnr_loss_is_theirs_for_one_and_two_given(select_list):
    from codebrain.models.losses import pooled_psnr_loss

    gen = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 12, 12, generator=gen)
    pred = target + 0.1 * torch.randn(4, 3, 12, 12, generator=gen) * torch.tensor([1.0, 2.0, 0.5])[:, None, None]
    mask = torch.tensor(select_list, dtype=torch.bool).expand(4, 3)  # one scenario per batch
    ours = pooled_psnr_loss(pred, target, mask, 5.0, 20.0)
    assert ours.item() == pytest.approx(their_psnr_loss(pred, target, select_list).item(), rel=1e-6)
    # one given contrast: 5 on it, 10 on each missing one (not the per-image loss's 5 / 20 / 20)
    per_contrast = 10 / math.log(10) * torch.log((pred - target).pow(2).mean(dim=(0, 2, 3)) + 1e-8)
    if sum(select_list) == 1:
        weights = torch.where(torch.tensor(select_list, dtype=torch.bool), 5.0, 10.0)
        assert ours.item() == pytest.approx((weights * per_contrast).sum().item(), rel=1e-6)


def test_discriminator_is_theirs_and_judges_the_composite_per_contrast():
    """Our D with their layers' weights gives their logits (B x N x 16 x 16 at 256 px; x 4 x 4 at 64); the fake
    is rec x (1 - m) + image x m beside the real stack, with target m per contrast; D's loss is theirs."""
    from codebrain.models.patchgan import adversarial_loss, build_discriminator
    from codebrain.training.loop import make_accelerator
    from codebrain.training.stage1 import StageOne

    cfg = release_model()
    ours, theirs = build_discriminator(cfg), their_discriminator(3)
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values())))
    with torch.device("meta"):
        assert build_discriminator(cfg)(torch.zeros(1, 6, 256, 256)).shape == (1, 3, 16, 16)
    gen = torch.Generator().manual_seed(1)
    image, rec = torch.rand(2, 3, 64, 64, generator=gen), torch.rand(2, 3, 64, 64, generator=gen)
    select_list = [1, 0, 1]
    mask = torch.tensor(select_list, dtype=torch.bool).expand(2, 3)
    stage = StageOne(Experiment.from_dict({"protocol": "release", "model": {"width": 4, "common_width": 4,
                                                                            "decoder_width": 16}}, CONTRASTS),
                     make_accelerator("fp32"))
    real, fake, fake_target = stage.judged(image, mask, image, rec)
    m = torch.as_tensor(select_list, dtype=image.dtype)[None, :, None, None]
    x_z = image * m
    fake_x_masked = rec * (1 - m) + x_z  # their composite
    torch.testing.assert_close(fake, torch.cat([fake_x_masked, image], 1))
    torch.testing.assert_close(real, torch.cat([image, image], 1))
    pred_real, pred_fake = theirs(torch.cat([image, image], 1)), theirs(torch.cat([fake_x_masked, image], 1))
    assert pred_fake.shape == (2, 3, 4, 4)
    torch.testing.assert_close(ours(fake), pred_fake)
    their_loss = 0.5 * (F.mse_loss(pred_real, torch.ones_like(pred_real))
                        + F.mse_loss(pred_fake, torch.ones_like(pred_fake) * m))
    our_loss = 0.5 * (adversarial_loss(ours(real), 1.0, "lsgan") + adversarial_loss(ours(fake), fake_target, "lsgan"))
    assert our_loss.item() == pytest.approx(their_loss.item(), rel=1e-6)


def test_grading_loss_averages_each_dimension_first():
    """lib/grader.py: BCE per code dimension (their ordinal labels from the FSQ values, utils/utils.py), then the
    mean over dimensions."""
    from codebrain.models.prior import CodePrior

    cfg = release_model(prior_width=4, prior_middle_blocks=1, width=4, common_width=4, decoder_width=16)
    prior = CodePrior(cfg)
    gen = torch.Generator().manual_seed(2)
    levels = cfg.levels
    codes = torch.stack([torch.randint(0, n, (3, 4, 4), generator=gen) for n in levels], 1)  # B x d x h x w
    logits = torch.randn(3, 1, sum(n - 1 for n in levels), 4, 4, generator=gen)

    def their_labels(index, s):  # scale_to_codes, then scale_to_oridinal_labels
        denom = s if s % 2 == 0 else s - 1
        y = index / denom * 2 - 1
        y = ((y + 1) * 0.5 * denom).unsqueeze(1)
        return (y > torch.arange(s - 1).view(1, -1, 1, 1)).float()

    chunks = torch.split(logits[:, 0], [n - 1 for n in levels], dim=1)
    theirs = sum(F.binary_cross_entropy_with_logits(o, their_labels(codes[:, j].float(), levels[j]))
                 for j, o in enumerate(chunks)) / len(levels)
    ours = prior.loss(logits, codes[:, None])
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    all_bits = CodePrior(cfg.model_copy(update={"grading_mean": "bits"})).loss(logits, codes[:, None])
    assert all_bits.item() != pytest.approx(theirs.item(), rel=1e-3)  # the mean over all 33 bits weighs otherwise


def their_step(gen, disc, image, select_list, gan_on: bool, lr_g: float, lr_d: float):
    """lib/reconstructor.py train_step with their optimisers (AdamW, betas (0.9, 0.9) and (0.5, 0.9), no weight
    decay), no gradient clipping; the generator's forward is codebrain's Reconstructor (the networks are tested
    above), called as their CodeBrain(x_z, x_r) is: the joint code from the full stack, F_c from the masked one."""
    opt_g = torch.optim.AdamW(gen.parameters(), lr=lr_g, betas=(0.9, 0.9), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=lr_d, betas=(0.5, 0.9), weight_decay=0.0)
    m = torch.as_tensor(select_list, dtype=image.dtype)[None, :, None, None]
    mask = torch.tensor(select_list, dtype=torch.bool).expand(len(image), -1)
    fake_x, _, _ = gen(image, mask, torch.zeros(len(image), dtype=torch.long))
    fake_x_masked = fake_x * (1 - m) + image * m
    pred_real = disc(torch.cat([image, image], 1))
    pred_fake = disc(torch.cat([fake_x_masked.detach(), image], 1))
    d_loss = 0.5 * (F.mse_loss(pred_real, torch.ones_like(pred_real))
                    + F.mse_loss(pred_fake, torch.ones_like(pred_fake) * m))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    total = their_psnr_loss(fake_x, image, select_list)
    for p in disc.parameters():
        p.requires_grad_(False)
    pred_fake2 = disc(torch.cat([fake_x_masked, image], 1))
    if gan_on:
        total = total + 0.1 * F.mse_loss(pred_fake2, torch.ones_like(pred_fake2))
    opt_g.zero_grad(set_to_none=True)
    total.backward()
    opt_g.step()


@pytest.mark.parametrize("gan_on", [False, True])
def test_one_training_step_is_theirs_without_clipping(gan_on):
    """One Stage I step of `protocol: release` (fp32, no clipping, D trained from step 0, G's adversarial term from
    gan_start) leaves the weights their step leaves; with clipping at 1.0 they differ (the step's gradients are
    large, so clipping would matter)."""
    from codebrain.training.loop import TrainingBatch, make_accelerator
    from codebrain.training.stage1 import StageOne

    tiny = {"width": 4, "middle_blocks": 1, "common_width": 4, "decoder_width": 16, "decoder_blocks": 1,
            "disc_width": 8, "disc_layers": 2}
    select_list = [0, 1, 1]
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor(select_list, dtype=torch.bool).expand(2, 3)
    batch = TrainingBatch(image, mask, torch.zeros(2, dtype=torch.long), None, 5)

    def stage_after_step(**stage1):
        experiment = Experiment.from_dict({"protocol": "release", "model": tiny,
                                           "stage1": {"steps": 10, "gan_start": 0.4 if gan_on else 0.8, **stage1}},
                                          CONTRASTS)
        stage = StageOne(experiment, make_accelerator(experiment.stage1.precision))
        start = copy.deepcopy(stage.model), copy.deepcopy(stage.disc)
        assert (stage.phase(5) == "adversarial") == gan_on and stage.trains_discriminator(5)
        stage.train_step(batch, lambda losses: None)
        return stage, start

    stage, (gen, disc) = stage_after_step()
    their_step(gen, disc, image, select_list, gan_on, lr_g=5e-4, lr_d=5e-5)
    for (name, a), b in zip(stage.model.named_parameters(), gen.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # D by its logits: the biases before an InstanceNorm get gradients of rounding size only (the norm removes
    # them), which Adam turns into steps of either sign; the logits do not see those biases
    probe = torch.rand(2, 6, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(stage.disc(probe), disc(probe), rtol=1e-5, atol=1e-6)
    clipped, _ = stage_after_step(grad_clip=1.0)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(clipped.model.parameters(), gen.parameters()))


def test_the_readmes_model_size_command_prints_the_releases_counts(capsys):
    """README: `codebrain model-size --config config/models/release.yaml` (Stage I 135.69 M, Stage II 27.88 M)."""
    from pathlib import Path

    from codebrain.cli import main

    main(["model-size", "--config", str(Path(__file__).parents[1] / "config" / "models" / "release.yaml")])
    rows = {line.split()[0] + (" " + line.split()[1] if line.startswith("Stage") else ""): line.split()
            for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["Stage I"][2] == "135.69" and rows["Stage II"][2] == "27.88"
