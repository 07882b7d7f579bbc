"""The one training loop (`fit`) and what it is built from: the accelerator, the data order, the LR schedule,
validation (the NaN guard is guard.py). A stage (stage1.py, stage2.py, direct.py) brings its networks, optimisers
and one optimisation step; the loop owns epochs, resume, stopping, logging, validation,
checkpoints and failure handling (docs/design.md, "Training").

Data order: each epoch is a permutation drawn from (seed, epoch), cut into global batches;
every process takes its contiguous share of each global batch. One process with batch B and
two with B/2 each therefore see the same samples per step, and a resumed run restarts at the
exact batch where it stopped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm import tqdm

from codebrain.checkpoints import save_checkpoint
from codebrain.data.dataset import SliceDataset, open_store, sample_scenario
from codebrain.evaluation.scenarios import evaluate_scenarios, summarise
from codebrain.io import InputError
from codebrain.models.nafnet import compile_blocks, set_bf16_residual, set_recompute
from codebrain.registry import RANKED_BY
from codebrain.tracking.tracker import Tracker
from codebrain.provenance import config_hash
from codebrain.training.config import TrainConfig, flatten
from codebrain.training.flops import counting_flops, summed_over_processes
from codebrain.training.guard import NonFiniteGuard
from codebrain.training.resume import Progress, ResumeState

VALIDATION_NAMES = {"stage2": "imputation", "stage1": "reconstruction", "direct": "direct regressor",
                    "zero": "zero-filling"}


@dataclass
class RunSpec:
    """Where a training run reads and writes, and how it is tracked."""
    store: Path
    out: Path
    run_record: Path | None = None
    tracking_uri: str = ""
    experiment_name: str = "codebrain"
    run_name: str = "train_stage1"
    tags: dict | None = None


def progress_bar(accelerator, total: int, initial: int, desc: str) -> tqdm:
    """Main process only; in a log file (no terminal) one line every 30 s instead of a redraw per step."""
    interval = 0.1 if sys.stderr.isatty() else 30
    return tqdm(total=total, initial=initial, desc=desc, unit="step", mininterval=interval,
                disable=not accelerator.is_main_process)


def make_accelerator(precision: str = "bf16") -> Accelerator:
    """bf16 autocast on GPUs unless the stage asks for fp32; full precision on the CPU. Slices have one shape,
    so cuDNN's autotuner picks each convolution's fastest kernel once."""
    cuda = torch.cuda.is_available()
    torch.backends.cudnn.benchmark = cuda
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and precision == "bf16" else "no")


class GlobalBatches:
    def __init__(self, n_items: int, global_batch: int, seed: int, rank: int, world: int):
        if global_batch % world:
            raise InputError(f"batch_size {global_batch} does not split evenly over {world} processes")
        if n_items < global_batch:
            raise InputError(f"{n_items} training slices are fewer than one batch ({global_batch})")
        self.n_items, self.global_batch, self.seed = n_items, global_batch, seed
        self.share, self.rank = global_batch // world, rank
        self.per_epoch = n_items // global_batch  # the incomplete last batch is dropped

    def epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        first = self.rank * self.share
        return [order[b * self.global_batch + first: b * self.global_batch + first + self.share].tolist()
                for b in range(start, self.per_epoch)]


def epoch_loader(dataset, batches: GlobalBatches, step: int, num_workers: int):
    """(epoch, DataLoader over the rest of that epoch) for the given global step."""
    epoch, offset = divmod(step, batches.per_epoch)
    dataset.set_epoch(epoch)
    return epoch, DataLoader(dataset, batch_sampler=batches.epoch(epoch, offset), num_workers=num_workers)


def batch_scenario(batch: dict, cfg: TrainConfig, step: int, n_contrasts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scenario_mask B x N, anchor B): per sample, or one per global batch (release) drawn from (seed, step)."""
    mask, anchor = batch["scenario_mask"], batch["anchor"]
    if cfg.per_batch_mask:
        scenario = sample_scenario(n_contrasts, np.random.default_rng([cfg.seed, step, 1]))
        mask = torch.from_numpy(scenario.available).expand_as(mask)
        anchor = torch.full_like(anchor, scenario.anchor)
    return mask, anchor


def cosine_lr(step: int, cfg: TrainConfig, base_lr: float | None = None) -> float:
    """Linear warm-up, then cosine from lr to lr_min over the remaining steps."""
    lr = cfg.lr if base_lr is None else base_lr
    floor = cfg.lr_min * lr / cfg.lr
    if step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_optimizer(parameters, cfg: TrainConfig, lr: float | None = None, betas=None):
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=lr or cfg.lr, betas=tuple(betas or cfg.betas), weight_decay=cfg.weight_decay)


def configure_blocks(model, cfg: TrainConfig) -> None:
    """A stage network's NAFBlock path: what backward recomputes, the residual stream's dtype under bf16, and whether
    each block is compiled."""
    set_recompute(model, cfg.recompute)
    set_bf16_residual(model, cfg.bf16_residual)
    if cfg.compile_blocks:
        compile_blocks(model)


def optimise(accelerator, optimizer, loss: torch.Tensor, model, grad_clip: float) -> None:
    """One optimiser step on `loss`: gradients through Accelerate (DDP, mixed precision), clipped to grad_clip
    (0: not clipped)."""
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def prepared(stage, batch: TrainingBatch) -> TrainingBatch:
    """The batch with what the stage's `prepare` adds from frozen networks (the batch itself if it has none)."""
    return stage.prepare(batch) if hasattr(stage, "prepare") else batch


def counted_step(stage, batch: TrainingBatch, guard) -> tuple[dict, int]:
    """(losses, FLOPs in this process) of one training step: the no-gradient `prepared` once, train_step three
    times."""
    batch, prepare_flops = counting_flops(prepared, stage, batch, passes=1)
    losses, step_flops = counting_flops(stage.train_step, batch, guard)
    return losses, prepare_flops + step_flops


def keep_if_best(progress: Progress, metrics: dict, key: str, model) -> None:
    """Remember the weights (on the CPU) whose validation `key` is the best so far."""
    score = metrics.get(key)
    if score is not None and score > progress.best_metrics.get(key, float("-inf")):
        progress.best_step, progress.best_metrics = progress.step, dict(metrics)
        progress.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def validate(accelerator, imputer, val_slices, contrasts, cfg: TrainConfig, tracker, step: int) -> dict:
    """PSNR over every scenario on the validation split (main process), per method of the imputer
    (CodeBrainImputer: Stage I reconstruction, Stage II imputation and code accuracy) and zero filling."""
    metrics = {}
    if accelerator.is_main_process:
        table = evaluate_scenarios(imputer, val_slices, contrasts, accelerator.device, cfg.val_batch_size)
        metrics = {f"val/{k}": v for k, v in summarise(table).items()}
        tracker.log_metrics(metrics, step)
        methods = [m for m in ("stage2", "stage1", "direct", "zero") if f"val/psnr_{m}" in metrics]
        accelerator.print(f"step {step}: val PSNR " + ", ".join(f"{VALIDATION_NAMES[m]} {metrics[f'val/psnr_{m}']:.2f} dB"
                                                               for m in methods))
    accelerator.wait_for_everyone()
    return metrics


@dataclass
class TrainingBatch:
    """One process's share of a global batch, on its device, with the scenario drawn for each sample."""
    image: torch.Tensor  # B x N x S x S in [0, 1]
    scenario_mask: torch.Tensor  # B x N, True = available
    anchor: torch.Tensor  # B, the masked contrast whose code Stage I learns
    codes: torch.Tensor | None  # B x n_code_maps x d' x h x w cached Stage I codes (Stage II only)
    step: int  # the global step this batch trains
    common: tuple | None = None  # F_c of the masked stack by Stage I's E_s (Stage II with a fine-tuned D_a)


class Stage(Protocol):
    """What a stage brings to `fit`."""
    name: str  # the checkpoint kind and the progress bar's label
    cfg: TrainConfig
    model_config: object  # saved in the checkpoint so the network can be rebuilt
    accelerator: Accelerator
    model: torch.nn.Module  # the network the final checkpoint holds (as prepared by Accelerate)
    optimizers: list[tuple[torch.optim.Optimizer, float]]  # (optimizer, base learning rate of its cosine)
    # optional flops_key(batch): steps with the same key cost the same FLOPs (Stage I: before and after the GAN
    # starts; Stage II with a fine-tuned D_a: how many missing contrasts it decodes)
    # optional prepare(batch) -> batch: what the step needs from frozen networks, made without gradients

    def train_step(self, batch: TrainingBatch, guard: Callable[[dict], None]) -> dict[str, torch.Tensor]:
        """Forward, backward and optimiser steps; returns the losses (each passed to guard before its backward)."""

    def imputer(self):
        """The imputer validation scores (evaluation/scenarios.py)."""


def fit(stage: Stage, spec: RunSpec, section: dict, resume_key: dict | None = None, codes_dir: Path | None = None,
        **checkpoint_extra) -> dict:
    """Train `stage` for cfg.steps global steps from where an interrupted run of the same config (resume_key,
    default the section) stopped; log, validate and keep resume state on the way; save the checkpoint at
    spec.out at the end. The MLflow run is marked FAILED if anything stops it."""
    accelerator, cfg = stage.accelerator, stage.cfg
    contrasts = stage.model_config.contrasts
    selected_by = f"val/psnr_{stage.name}_one_missing"  # the paper's model selection
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    state = ResumeState(spec.out, config_hash(resume_key or section))
    last = state.latest()
    if last is not None:
        accelerator.load_state(str(last))
        accelerator.print(f"resumed from {last} at step {progress.step}")
    dataset = SliceDataset(spec.store, "train", contrasts, seed=cfg.seed, augment=cfg.augment, subjects=cfg.subjects,
                           codes_dir=None if cfg.augment else codes_dir)  # augmented: Stage II encodes its codes
    val_slices, _ = open_store(spec.store, "val", contrasts)
    batches = GlobalBatches(len(dataset), cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes)
    main = accelerator.is_main_process
    tracker = Tracker(main, spec.tracking_uri, spec.experiment_name, spec.run_name, spec.tags,
                      flatten(section) if main else None)
    tracker.log_dict(section, "config.json")
    tracker.log_store_input(spec.store, ["train", "val"], "training")

    device = accelerator.device
    bar = progress_bar(accelerator, cfg.steps, progress.step, stage.name)
    started, started_step, wall_before, metrics = time.time(), progress.step, progress.wall_s, {}
    flops_key = getattr(stage, "flops_key", lambda batch: None)
    step_flops = {}  # flops_key -> this process's FLOPs of one step, counted on its first such step
    guard, unsynced_flops = NonFiniteGuard(accelerator, state), 0
    try:
        while progress.step < cfg.steps:
            _, loader = epoch_loader(dataset, batches, progress.step, cfg.num_workers)
            for batch in loader:
                step = progress.step
                scenario_mask, anchor = batch_scenario(batch, cfg, step, len(contrasts))
                codes = batch["codes"].to(device) if "codes" in batch else None
                inputs = TrainingBatch(batch["image"].to(device).float(), scenario_mask.to(device), anchor.to(device),
                                       codes, step)
                for optimizer, base_lr in stage.optimizers:
                    set_lr(optimizer, cosine_lr(step, cfg, base_lr))
                step_guard = partial(guard, step=step)
                key = flops_key(inputs)
                if key not in step_flops:
                    losses, step_flops[key] = counted_step(stage, inputs, step_guard)
                else:
                    losses = stage.train_step(prepared(stage, inputs), step_guard)
                unsynced_flops += step_flops[key]
                progress.step += 1
                progress.wall_s = wall_before + time.time() - started

                logs = progress.step % cfg.log_every == 0 or progress.step == cfg.steps
                validates = progress.step % cfg.validate_every == 0 or progress.step == cfg.steps
                saves = progress.step % cfg.checkpoint_every == 0 and progress.step < cfg.steps
                if logs or validates or saves:  # the only host synchronisations
                    guard.check()
                    progress.flops += summed_over_processes(accelerator, unsynced_flops)
                    unsynced_flops = 0
                if logs:
                    samples_per_s = (progress.step - started_step) * cfg.batch_size / (time.time() - started)
                    logged = {f"train/{k}": accelerator.reduce(v.detach(), "mean").item() for k, v in losses.items()}
                    logged.update({"train/lr": stage.optimizers[0][0].param_groups[0]["lr"],
                                   "train/samples_per_s": samples_per_s, "train/flops": progress.flops,
                                   "train/wall_s": progress.wall_s})
                    tracker.log_metrics(logged, progress.step)
                    bar.set_postfix({name: f"{logged[f'train/{name}']:.3f}" for name in losses} |
                                    {"samples_s": f"{samples_per_s:.0f}"}, refresh=False)
                bar.update(1)
                if validates:
                    metrics = validate(accelerator, stage.imputer(), val_slices, contrasts, cfg, tracker, progress.step)
                    keep_if_best(progress, metrics, selected_by, accelerator.unwrap_model(stage.model))
                if saves:
                    state.save(accelerator, progress.step)
                if progress.step >= cfg.steps:
                    break
    except BaseException:
        tracker.finish(None, status="FAILED")
        raise
    bar.close()

    if main:
        weights, step = accelerator.unwrap_model(stage.model).state_dict(), progress.step
        if cfg.keep == "best" and progress.best_weights is not None:
            weights, step, metrics = progress.best_weights, progress.best_step, progress.best_metrics
            tracker.log_metrics({"val/selected_step": step, **{f"selected/{k}": v for k, v in metrics.items()}},
                                progress.step)
        metrics = {**metrics, "train/flops": progress.flops, "train/steps": progress.step}
        save_checkpoint(spec.out, stage.name, weights, stage.model_config, step, metrics,
                        experiment=section, data=dataset.summary, **checkpoint_extra)
        tracker.log_checkpoint(spec.out)
        if stage.name in RANKED_BY:  # an imputer: into the model registry as <dataset>-<experiment>
            tracker.log_imputer(spec.out, f"{spec.experiment_name}-{spec.tags['experiment']}", stage.name, metrics)
    state.clear(accelerator)
    tracker.finish(spec.run_record)
    return metrics
