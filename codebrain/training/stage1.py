"""Stage I: E_posterior + quantiser + E_s + D_a against a PatchGAN (docs/design.md, "The method").

One step: reconstruct each sample's anchor from its code and the common features of the masked
stack, PSNR loss + lambda * adversarial loss. The loop around it is training/loop.py's `fit`.
"""

from __future__ import annotations

import torch
from accelerate.utils import set_seed

from codebrain.evaluation.scenarios import CodeBrainImputer
from codebrain.models.losses import psnr_loss, reconstruction_weights
from codebrain.models.nafnet import checkpoint_blocks
from codebrain.models.patchgan import PatchDiscriminator, adversarial_loss
from codebrain.models.reconstructor import Reconstructor
from codebrain.training.config import Experiment
from codebrain.training.loop import RunSpec, TrainingBatch, fit, make_accelerator, make_optimizer, optimise


class StageOne:
    name = "stage1"

    def __init__(self, experiment: Experiment, accelerator):
        self.cfg, self.model_config, self.accelerator = experiment.stage1, experiment.model, accelerator
        cfg, model_cfg = self.cfg, self.model_config
        set_seed(cfg.seed)  # identical initial weights on every process
        model = Reconstructor(model_cfg)
        checkpoint_blocks(model, cfg.activation_checkpointing)
        n = len(model_cfg.contrasts)
        out_channels = n if model_cfg.joint_code else 1
        disc = PatchDiscriminator(out_channels + (n if model_cfg.disc_conditional else 0), model_cfg.disc_width,
                                  model_cfg.disc_layers)
        opt_g = make_optimizer(model.parameters(), cfg)
        opt_d = make_optimizer(disc.parameters(), cfg, lr=cfg.disc_lr, betas=cfg.disc_betas)
        self.model, self.disc, self.opt_g, self.opt_d = accelerator.prepare(model, disc, opt_g, opt_d)
        self.optimizers = [(self.opt_g, cfg.lr), (self.opt_d, cfg.disc_lr)]
        self.gan_from = int(cfg.gan_start * cfg.steps) if cfg.gan_weight > 0 else cfg.steps + 1

    def phase(self, step: int) -> str:
        return "adversarial" if step >= self.gan_from else "reconstruction"

    def flops_key(self, batch: TrainingBatch) -> str:
        return self.phase(batch.step)

    def train_step(self, batch: TrainingBatch, guard) -> dict:
        cfg, joint, accelerator = self.cfg, self.model_config.joint_code, self.accelerator
        self.model.train(), self.disc.train()
        image, mask, anchor = batch.image, batch.scenario_mask, batch.anchor
        reconstruction, _, quantiser_loss = self.model(image, mask, anchor)  # B x out_channels x S x S
        target = image if joint else image[torch.arange(len(image)), anchor][:, None]
        condition = [image * mask[:, :, None, None]] if self.model_config.disc_conditional else []
        use_gan = self.phase(batch.step) == "adversarial"

        losses = {}
        if use_gan:  # discriminator step on [real; fake] in one call (one DDP reduction)
            real = torch.cat(condition + [target], 1)
            fake = torch.cat(condition + [reconstruction.detach()], 1)
            real_logits, fake_logits = self.disc(torch.cat([real, fake])).chunk(2)
            losses["disc_loss"] = 0.5 * (adversarial_loss(real_logits, True, cfg.gan_loss)
                                         + adversarial_loss(fake_logits, False, cfg.gan_loss))
        weights = reconstruction_weights(mask, cfg.available_weight, cfg.missing_weight) if joint else None
        losses["psnr_loss"] = psnr_loss(reconstruction, target, weights)
        losses["quantiser_loss"] = quantiser_loss
        guard(losses)
        if use_gan:
            optimise(accelerator, self.opt_d, losses["disc_loss"], self.disc, cfg.grad_clip)
            # the generator sees the updated D without DDP, so this pass's D gradients never sync
            fooled = accelerator.unwrap_model(self.disc)(torch.cat(condition + [reconstruction], 1))
            losses["adversarial_loss"] = adversarial_loss(fooled, True, cfg.gan_loss)
            guard({"adversarial_loss": losses["adversarial_loss"]})
        generator_loss = (losses["psnr_loss"] + losses["quantiser_loss"]
                          + cfg.gan_weight * losses.get("adversarial_loss", 0.0))
        optimise(accelerator, self.opt_g, generator_loss, self.model, cfg.grad_clip)
        return losses

    def imputer(self):
        return CodeBrainImputer(self.accelerator.unwrap_model(self.model))


def train(experiment: Experiment, spec: RunSpec) -> dict:
    return fit(StageOne(experiment, make_accelerator()), spec, experiment.to_dict())
