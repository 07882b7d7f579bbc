"""Training the direct regressor (baseline): masked stack + availability bits -> all contrasts, PSNR loss
on the missing ones; the same data, scenario sampler, schedule and checkpointing as CodeBrain's stages."""

from __future__ import annotations

import time

from accelerate.utils import set_seed

from codebrain.evaluation.scenarios import DirectImputer
from codebrain.models.direct import DirectRegressor
from codebrain.models.losses import psnr_loss
from codebrain.training.checkpoints import save_checkpoint
from codebrain.training.config import DirectExperiment
from codebrain.training.loop import (Progress, RunSpec, batch_scenario, check_finite, cosine_lr, epoch_loader,
                                     make_accelerator, make_optimizer, open_run, progress_bar, set_lr, validate)
from codebrain.training.stage1 import reconstruction_weights


def train(experiment: DirectExperiment, spec: RunSpec) -> dict:
    cfg, model_cfg = experiment.train, experiment.model
    accelerator = make_accelerator()
    set_seed(cfg.seed)
    model = DirectRegressor(model_cfg)
    optimizer = make_optimizer(model.parameters(), cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)

    section = experiment.to_dict()
    run = open_run(accelerator, spec, section, cfg, model_cfg.contrasts, progress)
    state, tracker = run.state, run.tracker
    n = len(model_cfg.contrasts)
    bar = progress_bar(accelerator, cfg.steps, progress.step, "direct")
    started, started_step, metrics = time.time(), progress.step, {}
    try:
        while progress.step < cfg.steps:
            _, loader = epoch_loader(run.dataset, run.batches, progress.step, cfg.num_workers)
            for batch in loader:
                step = progress.step
                model.train()
                image = batch["image"].to(accelerator.device).float()  # B x N x S x S
                mask, _ = batch_scenario(batch, cfg, step, n)
                mask = mask.to(accelerator.device)
                set_lr(optimizer, cosine_lr(step, cfg))

                output = model(image * mask[:, :, None, None], mask)  # B x N x S x S
                losses = {"psnr": psnr_loss(output, image, reconstruction_weights(cfg, mask, joint=True))}
                check_finite(accelerator, losses, step, state)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(losses["psnr"])
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                progress.step += 1

                if progress.step % cfg.log_every == 0 or progress.step == cfg.steps:
                    samples_per_s = (progress.step - started_step) * cfg.batch_size / (time.time() - started)
                    logged = {"train/psnr": -accelerator.reduce(losses["psnr"].detach(), "mean").item(),
                              "train/lr": optimizer.param_groups[0]["lr"], "train/samples_per_s": samples_per_s}
                    tracker.log_metrics(logged, progress.step)
                    bar.set_postfix(psnr=f"{logged['train/psnr']:.2f}", samples_s=f"{samples_per_s:.0f}", refresh=False)
                bar.update(1)
                if progress.step % cfg.checkpoint_every == 0 and progress.step < cfg.steps:
                    state.save(accelerator, progress.step)
                if progress.step % cfg.validate_every == 0 or progress.step == cfg.steps:
                    imputer = DirectImputer(accelerator.unwrap_model(model))
                    metrics = validate(accelerator, imputer, run.val_slices, model_cfg.contrasts, cfg, tracker, progress.step)
                if progress.step >= cfg.steps:
                    break
    except BaseException:
        tracker.finish(None, status="FAILED")
        raise
    bar.close()

    if accelerator.is_main_process:
        save_checkpoint(spec.out, "direct", accelerator.unwrap_model(model).state_dict(), model_cfg, progress.step,
                        metrics, experiment=section, data=run.dataset.summary)
        tracker.log_checkpoint(spec.out)
    state.clear(accelerator)
    tracker.finish(spec.run_record)
    return metrics
