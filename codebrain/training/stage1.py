"""Stage I: E_posterior + quantiser + E_s + D_a against a PatchGAN (docs/design.md, "The method").

One step: reconstruct each sample's anchor (joint code: every contrast) from its code and the common features of
the masked stack, PSNR loss + lambda * adversarial loss. The loop around it is training/loop.py's `fit`.
"""

from __future__ import annotations

import torch
from accelerate.utils import set_seed

from codebrain.evaluation.scenarios import CodeBrainImputer
from codebrain.models.losses import pooled_psnr_loss, psnr_loss, reconstruction_weights
from codebrain.models.patchgan import adversarial_loss, build_discriminator
from codebrain.models.reconstructor import Reconstructor
from codebrain.training.config import Experiment
from codebrain.training.loop import (RunSpec, TrainingBatch, configure_blocks, fit, make_accelerator, make_optimizer,
                                     optimise)


class StageOne:
    name = "stage1"

    def __init__(self, experiment: Experiment, accelerator):
        self.cfg, self.model_config, self.accelerator = experiment.stage1, experiment.model, accelerator
        cfg, model_cfg = self.cfg, self.model_config
        set_seed(cfg.seed)  # identical initial weights on every process
        model = Reconstructor(model_cfg)
        configure_blocks(model, cfg)
        disc = build_discriminator(model_cfg)
        opt_g = make_optimizer(model.parameters(), cfg)
        opt_d = make_optimizer(disc.parameters(), cfg, lr=cfg.disc_lr, betas=cfg.disc_betas)
        self.model, self.disc, self.opt_g, self.opt_d = accelerator.prepare(model, disc, opt_g, opt_d)
        # the loop's cosine schedule; D's rate stays at disc_lr without disc_lr_decay (the release)
        self.optimizers = [(self.opt_g, cfg.lr)] + ([(self.opt_d, cfg.disc_lr)] if cfg.disc_lr_decay else [])
        self.gan_from = int(cfg.gan_start * cfg.steps) if cfg.gan_weight > 0 else cfg.steps + 1

    def phase(self, step: int) -> str:
        return "adversarial" if step >= self.gan_from else "reconstruction"

    def trains_discriminator(self, step: int) -> bool:
        return self.cfg.gan_weight > 0 and (self.cfg.disc_from_start or self.phase(step) == "adversarial")

    def flops_key(self, batch: TrainingBatch) -> str:
        return self.phase(batch.step)  # whether D trains follows from the phase

    def judged(self, image, mask, target, reconstruction):
        """(real, fake, the fake's target) as D sees them. pix2pix: the target and D_a's output, target 0. release:
        each beside the full real stack, the fake the composite rec x (1 - m) + image x m, whose given contrasts
        are real, so its target is m per contrast."""
        if self.model_config.discriminator == "pix2pix":
            return target, reconstruction, 0.0
        m = mask[:, :, None, None].to(image.dtype)  # B x N x 1 x 1
        composite = reconstruction * (1 - m) + image * m
        return torch.cat([image, image], 1), torch.cat([composite, image], 1), m

    def train_step(self, batch: TrainingBatch, guard) -> dict:
        cfg, joint, accelerator = self.cfg, self.model_config.joint_code, self.accelerator
        self.model.train(), self.disc.train()
        image, mask, anchor = batch.image, batch.scenario_mask, batch.anchor
        reconstruction, _, quantiser_loss = self.model(image, mask, anchor)  # B x out_channels x S x S
        target = image if joint else image[torch.arange(len(image)), anchor][:, None]
        real, fake, fake_target = self.judged(image, mask, target, reconstruction)

        losses = {}
        train_disc = self.trains_discriminator(batch.step)
        if train_disc:  # discriminator step on [real; fake] in one call (one DDP reduction)
            real_logits, fake_logits = self.disc(torch.cat([real, fake.detach()])).chunk(2)
            losses["disc_loss"] = 0.5 * (adversarial_loss(real_logits, 1.0, cfg.gan_loss)
                                         + adversarial_loss(fake_logits, fake_target, cfg.gan_loss))
        if joint and cfg.psnr_loss == "pooled":
            losses["psnr_loss"] = pooled_psnr_loss(reconstruction, target, mask, cfg.available_weight,
                                                   cfg.missing_weight)
        else:
            weights = reconstruction_weights(mask, cfg.available_weight, cfg.missing_weight) if joint else None
            losses["psnr_loss"] = psnr_loss(reconstruction, target, weights)
        losses["quantiser_loss"] = quantiser_loss
        guard(losses)
        if train_disc:
            optimise(accelerator, self.opt_d, losses["disc_loss"], self.disc, cfg.grad_clip)
        if self.phase(batch.step) == "adversarial":
            # the generator sees the updated D without DDP, so this pass's D gradients never sync
            fooled = accelerator.unwrap_model(self.disc)(fake)
            losses["adversarial_loss"] = adversarial_loss(fooled, 1.0, cfg.gan_loss)
            guard({"adversarial_loss": losses["adversarial_loss"]})
        generator_loss = (losses["psnr_loss"] + losses["quantiser_loss"]
                          + cfg.gan_weight * losses.get("adversarial_loss", 0.0))
        optimise(accelerator, self.opt_g, generator_loss, self.model, cfg.grad_clip)
        return losses

    def imputer(self):
        return CodeBrainImputer(self.accelerator.unwrap_model(self.model))


def train(experiment: Experiment, spec: RunSpec) -> dict:
    return fit(StageOne(experiment, make_accelerator(experiment.stage1.precision)), spec, experiment.to_dict())
