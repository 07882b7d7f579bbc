"""The direct regressor (baseline): masked stack + availability bits -> all contrasts, PSNR loss on the
missing ones; the same data, scenario sampler, schedule and loop (`fit`) as CodeBrain's stages."""

from __future__ import annotations

from accelerate.utils import set_seed

from codebrain.evaluation.scenarios import DirectImputer
from codebrain.models.direct import DirectRegressor
from codebrain.models.losses import psnr_loss, reconstruction_weights
from codebrain.training.config import DirectExperiment
from codebrain.training.loop import (RunSpec, TrainingBatch, configure_blocks, fit, make_accelerator, make_optimizer,
                                     optimise)


class DirectStage:
    name = "direct"

    def __init__(self, experiment: DirectExperiment, accelerator):
        self.cfg, self.model_config, self.accelerator = experiment.train, experiment.model, accelerator
        set_seed(self.cfg.seed)
        model = DirectRegressor(self.model_config)
        configure_blocks(model, self.cfg)
        optimizer = make_optimizer(model.parameters(), self.cfg)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.optimizers = [(self.optimizer, self.cfg.lr)]

    def train_step(self, batch: TrainingBatch, guard) -> dict:
        self.model.train()
        mask = batch.scenario_mask
        output = self.model(batch.image * mask[:, :, None, None], mask)  # B x N x S x S
        weights = reconstruction_weights(mask, self.cfg.available_weight, self.cfg.missing_weight)
        losses = {"psnr_loss": psnr_loss(output, batch.image, weights)}
        guard(losses)
        optimise(self.accelerator, self.optimizer, losses["psnr_loss"], self.model, self.cfg.grad_clip)
        return losses

    def imputer(self):
        return DirectImputer(self.accelerator.unwrap_model(self.model))


def train(experiment: DirectExperiment, spec: RunSpec) -> dict:
    return fit(DirectStage(experiment, make_accelerator(experiment.train.precision)), spec, experiment.to_dict())
