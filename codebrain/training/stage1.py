"""Stage I training: E_posterior + quantiser + E_s + D_a against a PatchGAN (DESIGN.md, "Stage I").

One loop: draw a batch (each slice with its scenario), reconstruct the anchor from its code and
the common features, PSNR loss + lambda * adversarial loss; checkpoint, validate, log.
"""

from __future__ import annotations

import time

import torch
from accelerate.utils import set_seed

from codebrain.evaluation.scenarios import CodeBrainImputer
from codebrain.models.losses import psnr_loss
from codebrain.models.patchgan import PatchDiscriminator, adversarial_loss
from codebrain.models.reconstructor import Reconstructor
from codebrain.training.checkpoints import save_checkpoint
from codebrain.training.config import Experiment
from codebrain.training.loop import (Progress, RunSpec, batch_scenario, check_finite, cosine_lr, epoch_loader,
                                     make_accelerator, make_optimizer, open_run, progress_bar, set_lr, validate)


def reconstruction_weights(cfg, mask, joint: bool):
    """PSNR-loss weights per output channel: none (the anchor alone), or missing/available (joint decoder)."""
    return torch.where(mask, cfg.available_weight, cfg.missing_weight).float() if joint else None


def train(experiment: Experiment, spec: RunSpec) -> dict:
    cfg, model_cfg = experiment.stage1, experiment.model
    accelerator = make_accelerator()
    set_seed(cfg.seed)  # identical initial weights on every process
    model = Reconstructor(model_cfg)
    n = len(model_cfg.contrasts)
    out_channels = n if model_cfg.joint_code else 1
    disc = PatchDiscriminator(out_channels + (n if model_cfg.disc_conditional else 0), model_cfg.disc_width,
                              model_cfg.disc_layers)
    opt_g = make_optimizer(model.parameters(), cfg)
    opt_d = make_optimizer(disc.parameters(), cfg, lr=cfg.disc_lr, betas=cfg.disc_betas)
    model, disc, opt_g, opt_d = accelerator.prepare(model, disc, opt_g, opt_d)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)

    section = experiment.to_dict()
    run = open_run(accelerator, spec, section, cfg, model_cfg.contrasts, progress)
    state, tracker = run.state, run.tracker
    gan_from = int(cfg.gan_start * cfg.steps) if cfg.gan_weight > 0 else cfg.steps + 1
    bar = progress_bar(accelerator, cfg.steps, progress.step, "stage1")
    started, started_step, metrics = time.time(), progress.step, {}
    try:
        while progress.step < cfg.steps:
            _, loader = epoch_loader(run.dataset, run.batches, progress.step, cfg.num_workers)
            for batch in loader:
                step = progress.step
                model.train(), disc.train()
                image = batch["image"].to(accelerator.device).float()  # B x N x S x S in [0, 1]
                mask, anchor = batch_scenario(batch, cfg, step, n)
                mask, anchor = mask.to(accelerator.device), anchor.to(accelerator.device)
                set_lr(opt_g, cosine_lr(step, cfg))
                set_lr(opt_d, cosine_lr(step, cfg, cfg.disc_lr))

                reconstruction, _, quantiser_loss = model(image, mask, anchor)  # B x out_channels x S x S
                target = image if model_cfg.joint_code else image[torch.arange(len(image)), anchor][:, None]
                condition = [image * mask[:, :, None, None]] if model_cfg.disc_conditional else []
                use_gan = step >= gan_from

                losses = {}
                if use_gan:  # discriminator step on [real; fake] in one call (one DDP reduction)
                    real = torch.cat(condition + [target], 1)
                    fake = torch.cat(condition + [reconstruction.detach()], 1)
                    logits = disc(torch.cat([real, fake]))
                    real_logits, fake_logits = logits.chunk(2)
                    losses["disc"] = 0.5 * (adversarial_loss(real_logits, True, cfg.gan_loss)
                                            + adversarial_loss(fake_logits, False, cfg.gan_loss))
                losses["psnr"] = psnr_loss(reconstruction, target, reconstruction_weights(cfg, mask, model_cfg.joint_code))
                losses["quantiser"] = quantiser_loss
                check_finite(accelerator, losses, step, state)
                if use_gan:
                    opt_d.zero_grad(set_to_none=True)
                    accelerator.backward(losses["disc"])
                    accelerator.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
                    opt_d.step()
                    # the generator sees the updated D without DDP, so this pass's D gradients never sync
                    fooled = accelerator.unwrap_model(disc)(torch.cat(condition + [reconstruction], 1))
                    losses["adversarial"] = adversarial_loss(fooled, True, cfg.gan_loss)
                    check_finite(accelerator, {"adversarial": losses["adversarial"]}, step, state)
                generator_loss = losses["psnr"] + losses["quantiser"] + cfg.gan_weight * losses.get("adversarial", 0.0)
                opt_g.zero_grad(set_to_none=True)
                accelerator.backward(generator_loss)
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt_g.step()
                progress.step += 1

                if progress.step % cfg.log_every == 0 or progress.step == cfg.steps:
                    samples_per_s = (progress.step - started_step) * cfg.batch_size / (time.time() - started)
                    logged = {f"train/{k}": accelerator.reduce(v.detach(), "mean").item() for k, v in losses.items()}
                    logged.update({"train/psnr": -logged["train/psnr"], "train/lr": opt_g.param_groups[0]["lr"],
                                   "train/samples_per_s": samples_per_s})
                    tracker.log_metrics(logged, progress.step)
                    bar.set_postfix(psnr=f"{logged['train/psnr']:.2f}", lr=f"{logged['train/lr']:.1e}",
                                    samples_s=f"{samples_per_s:.0f}", refresh=False)
                bar.update(1)
                if progress.step % cfg.checkpoint_every == 0 and progress.step < cfg.steps:
                    state.save(accelerator, progress.step)
                if progress.step % cfg.validate_every == 0 or progress.step == cfg.steps:
                    imputer = CodeBrainImputer(accelerator.unwrap_model(model))
                    metrics = validate(accelerator, imputer, run.val_slices, model_cfg.contrasts, cfg, tracker, progress.step)
                if progress.step >= cfg.steps:
                    break
    except BaseException:
        tracker.finish(None, status="FAILED")
        raise
    bar.close()

    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_checkpoint(spec.out, "stage1", unwrapped.state_dict(), model_cfg, progress.step, metrics,
                        experiment=section, data=run.dataset.summary)
        tracker.log_checkpoint(spec.out)
    state.clear(accelerator)
    tracker.finish(spec.run_record)
    return metrics

