"""Training FLOPs of a config's experiments before training them, as `fit` will count them, so that
CodeBrain (Stage I + Stage II) and the direct regressor can be given the same compute.

One step of each stage (and each phase of Stage I: before and after the GAN starts) is counted for one
sample of the config's slice size and scaled by the batch size: every layer works per sample.
"""

from __future__ import annotations

import numpy as np
import torch

from codebrain.models.reconstructor import Reconstructor
from codebrain.training.config import DirectExperiment, parse_experiment
from codebrain.training.loop import TrainingBatch, counted_step, make_accelerator


def one_sample_step(stage, n_contrasts: int, size: int, step: int, codes: torch.Tensor | None = None,
                    missing: int = 1) -> int:
    """FLOPs of `stage`'s train_step on one random sample (`missing` contrasts missing) at global step `step`."""
    mask = torch.ones(1, n_contrasts, dtype=torch.bool)
    mask[0, :missing] = False
    batch = TrainingBatch(torch.rand(1, n_contrasts, size, size), mask, torch.zeros(1, dtype=torch.long),
                          codes, step)
    return counted_step(stage, batch, lambda losses: None)[1]


def experiment_flops(section: dict, contrasts: list[str], size: int) -> dict[str, int]:
    """{stage: training FLOPs of its whole run} for one experiment section (stage1, stage2 or direct)."""
    from codebrain.training.direct import DirectStage
    from codebrain.training.stage1 import StageOne
    from codebrain.training.stage2 import StageTwo

    experiment, accelerator = parse_experiment(section, contrasts), make_accelerator()
    n = len(contrasts)
    if isinstance(experiment, DirectExperiment):
        cfg = experiment.train
        return {"direct": round(one_sample_step(DirectStage(experiment, accelerator), n, size, 0) * cfg.batch_size
                                * cfg.steps)}
    stage1, cfg1, cfg2 = StageOne(experiment, accelerator), experiment.stage1, experiment.stage2
    flops = {"stage1": 0}
    for phase in ("reconstruction", "adversarial"):
        steps = sum(stage1.phase(step) == phase for step in range(cfg1.steps))
        if steps:
            first = next(step for step in range(cfg1.steps) if stage1.phase(step) == phase)
            flops["stage1"] += round(one_sample_step(stage1, n, size, first) * cfg1.batch_size * steps)
    reconstructor = Reconstructor(experiment.model)
    codes = None  # augmented: Stage II encodes them in its step
    if not cfg2.augment:
        with torch.no_grad():
            codes = reconstructor.encode(torch.rand(1, n, size, size))
    stage2 = StageTwo(experiment, accelerator, reconstructor, experiment.model)
    # the scenario sampler masks k ~ U{1..N-1} contrasts (a fine-tuned D_a decodes each): the mean over k
    per_sample = np.mean([one_sample_step(stage2, n, size, 0, codes, k) for k in range(1, n)])
    flops["stage2"] = round(per_sample * cfg2.batch_size * cfg2.steps)
    return flops


def config_flops(config: dict) -> dict[str, dict[str, int]]:
    """{experiment: {stage: FLOPs}} for a workflow config (its dataset contrasts and slice size)."""
    contrasts, size = config["dataset"]["contrasts"], config["slices"]["size"]
    return {name: experiment_flops(section, contrasts, size) for name, section in config["experiments"].items()}
