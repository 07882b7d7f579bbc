"""Stage II training: E_prior learns the cached Stage I codes of all contrasts from the masked stack.

Stage I stays frozen; it is only used for validation, where E_prior's predicted code of each
missing contrast goes through D_a, so the imputation PSNR is visible while Stage II trains.
"""

from __future__ import annotations

import time

from accelerate.utils import set_seed

from codebrain.data.nifti import InputError
from codebrain.evaluation.scenarios import CodeBrainImputer
from codebrain.models.config import ModelConfig
from codebrain.models.prior import CodePrior
from codebrain.training.cache_codes import load_stage1
from codebrain.training.checkpoints import config_mismatch, save_checkpoint
from codebrain.training.config import Experiment
from codebrain.training.loop import (Progress, RunSpec, batch_scenario, check_finite, cosine_lr, epoch_loader,
                                     make_accelerator, make_optimizer, open_run, progress_bar, set_lr, validate)

STAGE1_FIELDS = ("contrasts", "quantiser", "levels", "code_dim", "codebook_size", "joint_code", "enc_blocks")


def train(experiment: Experiment, spec: RunSpec, stage1_checkpoint, codes_dir) -> dict:
    cfg = experiment.stage2
    stage1, stage1_payload = load_stage1(stage1_checkpoint, experiment.model.contrasts)
    problems = config_mismatch(stage1_payload["model_config"],
                               {k: getattr(experiment.model, k) for k in STAGE1_FIELDS})
    if problems:
        raise InputError(f"{stage1_checkpoint}: Stage I from another config: " + "; ".join(problems))
    model_cfg = ModelConfig.from_dict(stage1_payload["model_config"])  # Stage I's shape, E_prior's from config
    for key in ("prior_width", "prior_enc_blocks", "prior_middle_blocks", "prior_loss"):
        setattr(model_cfg, key, getattr(experiment.model, key))

    accelerator = make_accelerator()
    set_seed(cfg.seed)
    prior = CodePrior(model_cfg)
    optimizer = make_optimizer(prior.parameters(), cfg)
    prior, optimizer = accelerator.prepare(prior, optimizer)
    stage1.to(accelerator.device).requires_grad_(False)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)

    section = experiment.to_dict()
    run = open_run(accelerator, spec, section, cfg, model_cfg.contrasts, progress,
                   resume_key={**section, "stage1": stage1_payload["metrics"]}, codes_dir=codes_dir)
    state, tracker = run.state, run.tracker
    n = len(model_cfg.contrasts)
    bar = progress_bar(accelerator, cfg.steps, progress.step, "stage2")
    started, started_step, metrics = time.time(), progress.step, {}
    try:
        while progress.step < cfg.steps:
            _, loader = epoch_loader(run.dataset, run.batches, progress.step, cfg.num_workers)
            for batch in loader:
                step = progress.step
                prior.train()
                image = batch["image"].to(accelerator.device).float()  # B x N x S x S
                codes = batch["codes"].to(accelerator.device)  # B x n_code_maps x d' x h x w
                mask, _ = batch_scenario(batch, cfg, step, n)
                masked = image * mask.to(accelerator.device)[:, :, None, None]  # M_s
                set_lr(optimizer, cosine_lr(step, cfg))

                logits = prior(masked)
                losses = {"code": accelerator.unwrap_model(prior).loss(logits, codes)}
                check_finite(accelerator, losses, step, state)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(losses["code"])
                accelerator.clip_grad_norm_(prior.parameters(), cfg.grad_clip)
                optimizer.step()
                progress.step += 1

                if progress.step % cfg.log_every == 0 or progress.step == cfg.steps:
                    samples_per_s = (progress.step - started_step) * cfg.batch_size / (time.time() - started)
                    logged = {"train/code_loss": accelerator.reduce(losses["code"].detach(), "mean").item(),
                              "train/lr": optimizer.param_groups[0]["lr"], "train/samples_per_s": samples_per_s}
                    tracker.log_metrics(logged, progress.step)
                    bar.set_postfix(loss=f"{logged['train/code_loss']:.3f}", samples_s=f"{samples_per_s:.0f}", refresh=False)
                bar.update(1)
                if progress.step % cfg.checkpoint_every == 0 and progress.step < cfg.steps:
                    state.save(accelerator, progress.step)
                if progress.step % cfg.validate_every == 0 or progress.step == cfg.steps:
                    imputer = CodeBrainImputer(stage1, accelerator.unwrap_model(prior))
                    metrics = validate(accelerator, imputer, run.val_slices, model_cfg.contrasts, cfg, tracker, progress.step)
                if progress.step >= cfg.steps:
                    break
    except BaseException:
        tracker.finish(None, status="FAILED")
        raise
    bar.close()

    if accelerator.is_main_process:
        save_checkpoint(spec.out, "stage2", accelerator.unwrap_model(prior).state_dict(), model_cfg, progress.step,
                        metrics, experiment=section, stage1=stage1_payload)
        tracker.log_checkpoint(spec.out)
    state.clear(accelerator)
    tracker.finish(spec.run_record)
    return metrics

