"""Stage II: E_prior learns the cached Stage I codes of all contrasts from the masked stack (docs/design.md).

Stage I stays frozen; it is only used for validation, where E_prior's predicted code of each
missing contrast goes through D_a, so the imputation PSNR is visible while Stage II trains.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from accelerate.utils import set_seed

from codebrain.checkpoints import config_mismatch
from codebrain.rebuild import load_stage1
from codebrain.evaluation.scenarios import CodeBrainImputer
from codebrain.io import InputError
from codebrain.models.config import PRIOR_FIELDS, STAGE1_FIELDS, ModelConfig
from codebrain.models.prior import CodePrior
from codebrain.training.config import Experiment
from codebrain.training.loop import (RunSpec, TrainingBatch, configure_blocks, fit, make_accelerator, make_optimizer,
                                     optimise)


def code_map_weights(scenario_mask: torch.Tensor, missing_weight: float) -> torch.Tensor | None:
    """B x N code-loss weights, one per contrast's code map: missing_weight where the contrast is missing, 1 where
    it is given (None when they are all alike). E_prior's codes of given contrasts are never decoded."""
    if missing_weight == 1:
        return None
    return torch.where(scenario_mask, 1.0, float(missing_weight))


class StageTwo:
    name = "stage2"

    def __init__(self, experiment: Experiment, accelerator, stage1, model_config: ModelConfig):
        self.cfg, self.model_config, self.accelerator = experiment.stage2, model_config, accelerator
        set_seed(self.cfg.seed)
        prior = CodePrior(model_config)
        if prior.decoder is not None:  # fine-tuned from Stage I's D_a
            prior.decoder.load_state_dict(stage1.decoder.state_dict())
        configure_blocks(prior, self.cfg)
        optimizer = make_optimizer(prior.parameters(), self.cfg)
        self.model, self.optimizer = accelerator.prepare(prior, optimizer)  # E_prior
        self.optimizers = [(self.optimizer, self.cfg.lr)]
        self.stage1 = stage1.to(accelerator.device).requires_grad_(False)

    def flops_key(self, batch: TrainingBatch) -> int | None:
        """A fine-tuned D_a decodes every missing (slice, contrast) pair: its cost follows their count."""
        return int((~batch.scenario_mask).sum()) if self.model_config.finetune_decoder else None

    def prepare(self, batch: TrainingBatch) -> TrainingBatch:
        """What frozen Stage I gives the step: the codes of augmented slices (not in the code cache), and F_c
        when D_a is fine-tuned."""
        with torch.no_grad():
            if batch.codes is None:
                batch = replace(batch, codes=self.stage1.encode(batch.image))
            if self.model_config.finetune_decoder:
                masked = batch.image * batch.scenario_mask[:, :, None, None]  # M_s
                batch = replace(batch, common=self.stage1.common_features(masked))
        return batch

    def train_step(self, batch: TrainingBatch, guard) -> dict:
        self.model.train()
        masked = batch.image * batch.scenario_mask[:, :, None, None]  # M_s
        logits = self.model(masked, batch.scenario_mask)
        weights = code_map_weights(batch.scenario_mask, self.cfg.code_missing_weight)
        prior = self.accelerator.unwrap_model(self.model)
        losses = {"code_loss": prior.loss(logits, batch.codes, weights)}
        if prior.decoder is not None:
            losses["decoder_l1"] = self.decoder_loss(prior, logits, batch)
        guard(losses)
        optimise(self.accelerator, self.optimizer, sum(losses.values()), self.model, self.cfg.grad_clip)
        return losses

    def decoder_loss(self, prior: CodePrior, logits, batch: TrainingBatch):
        """L1 of the fine-tuned D_a on each missing contrast, decoded from the codes E_prior predicts (what it
        will decode at imputation time). No gradient reaches E_prior through the codes: the decoder adapts to
        the prior's errors, the prior is still trained on the codes alone. The mean is over the pairs of every
        process (their batches miss different numbers of contrasts), so DDP's averaged gradient is the
        single-process one."""
        with torch.no_grad():
            codes = prior.decoded_codes(logits)  # B x N x d' x h x w
        sample, target = (~batch.scenario_mask).nonzero(as_tuple=True)  # the missing (slice, contrast) pairs
        common = batch.common  # F_c (prepare)
        if common is not None:
            skips, bottleneck = common
            common = [skip[sample] for skip in skips], bottleneck[sample]
        latent = self.stage1.quantiser.codes_to_latent(codes[sample, target])  # M x d x h x w
        decoded = prior.decoder(latent, common)[:, 0]  # M x S x S
        errors = (decoded - batch.image[sample, target]).abs()
        pairs = self.accelerator.reduce(torch.tensor(float(len(sample)), device=errors.device), "mean")
        return errors.sum() / (pairs * errors[0].numel())

    def imputer(self):
        return CodeBrainImputer(self.stage1, self.accelerator.unwrap_model(self.model))


def train(experiment: Experiment, spec: RunSpec, stage1_checkpoint: Path, codes_dir: Path) -> dict:
    stage1, stage1_payload = load_stage1(stage1_checkpoint, experiment.model.contrasts)
    problems = config_mismatch(stage1_payload["model_config"],
                               {k: getattr(experiment.model, k) for k in STAGE1_FIELDS})
    if problems:
        raise InputError(f"{stage1_checkpoint}: Stage I from another config: " + "; ".join(problems))
    model_config = ModelConfig.from_dict(stage1_payload["model_config"])  # Stage I's shape, E_prior's from config
    for key in PRIOR_FIELDS:
        setattr(model_config, key, getattr(experiment.model, key))
    section = experiment.to_dict()
    stage = StageTwo(experiment, make_accelerator(experiment.stage2.precision), stage1, model_config)
    return fit(stage, spec, section, resume_key={**section, "stage1": stage1_payload["metrics"]},
               codes_dir=codes_dir, stage1=stage1_payload)
