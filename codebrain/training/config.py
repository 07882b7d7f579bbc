"""Training configuration: one typed section per stage, and the protocols (paper text, authors' release).

An experiment's config section is {protocol, model, stage1, stage2}; the protocol supplies
defaults (docs/design.md, "Protocols") and the section's own keys win, so the paper's ablations and the
release are configs, not code edits.
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                      PositiveInt, Tag, TypeAdapter, model_validator)

from codebrain.data.augment import KINDS as AUGMENT_KINDS
from codebrain.models.config import PRIOR_FIELDS, ModelConfig


class TrainConfig(BaseModel):
    """One training stage's settings (an experiment's `stage1`, `stage2` or `train` section)."""

    model_config = ConfigDict(extra="forbid")

    steps: PositiveInt = 2000
    batch_size: PositiveInt = 16  # global batch: split across processes, so any process count sees the same batches
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: PositiveFloat = 1e-3
    lr_min: NonNegativeFloat = 1e-5  # cosine floor
    warmup_steps: NonNegativeInt = 0
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = [0.9, 0.999]
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: NonNegativeFloat = 1.0  # 0: no clipping (the release)
    precision: Literal["bf16", "fp32"] = "bf16"  # on GPUs (the CPU always trains in fp32); the release: fp32
    # what NAFBlocks recompute in backward instead of keeping (codebrain.models.nafnet.set_recompute): memory for time
    recompute: Literal["none", "elementwise", "expansions", "blocks"] = "none"
    compile_blocks: bool = False  # torch.compile each NAFBlock (regional compilation; nafnet.compile_blocks)
    bf16_residual: bool = False  # bf16 only: NAFBlocks' residual stream in bf16, not fp32 (nafnet.set_bf16_residual)
    # Stage I only: adversarial term and reconstruction weights
    gan_weight: NonNegativeFloat = 1.0  # lambda; 0 switches the discriminator off
    gan_loss: Literal["vanilla", "lsgan"] = "vanilla"  # vanilla: BCE
    gan_start: Annotated[float, Field(ge=0, le=1)] = 0.0  # fraction of the steps before the adversarial loss switches on
    disc_from_start: bool = False  # release: D trains from step 0; only G's adversarial term waits for gan_start
    disc_lr: PositiveFloat = 2e-4
    disc_lr_decay: bool = True  # D's rate follows G's cosine; release: constant
    disc_betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = [0.5, 0.999]
    psnr_loss: Literal["per_image", "pooled"] = "per_image"  # joint decoder: log per image, weights summed over
    # contrasts | the release's: MSE pooled over the batch per contrast, weight x mean over available / missing
    missing_weight: NonNegativeFloat = 1.0  # PSNR-loss weight on masked contrasts (release: 20)
    available_weight: NonNegativeFloat = 0.0  # on available ones, joint decoder only (release: 5)
    per_batch_mask: bool = False  # release: one scenario per batch instead of per sample
    augment: list[Literal[AUGMENT_KINDS]] = []  # data/augment.py, p = 1/2 each
    subjects: PositiveInt | None = None  # train on the first N training subjects (dataset.subject_order); None: all
    # Stage II only
    code_missing_weight: NonNegativeFloat = 1.0  # code-loss weight of a missing contrast's code map against a given one's
    # bookkeeping
    keep: Literal["best", "last"] = "best"  # best: the weights with the best validation one-missing PSNR
    checkpoint_every: PositiveInt = 500
    validate_every: PositiveInt = 500
    log_every: PositiveInt = 20
    val_batch_size: PositiveInt = 64
    num_workers: NonNegativeInt = 0
    seed: int = 0

    @model_validator(mode="after")
    def bf16_residual_needs_bf16(self) -> "TrainConfig":
        if self.bf16_residual and self.precision != "bf16":
            raise ValueError(f"bf16_residual: needs precision: bf16 (precision is {self.precision})")
        return self


PROTOCOLS = {
    "paper": {"model": {}, "stage1": {}, "stage2": {"gan_weight": 0.0}},
    # the paper where it is explicit, with what won on validation in issue 13's study (docs/results.md): D_a fine-tuned
    # on the predicted codes
    "tuned": {"model": {"finetune_decoder": True}, "stage1": {}, "stage2": {"gan_weight": 0.0}},
    "release": {  # docs/design.md, "Protocols": the authors' code (train_rec.py, train_grad.py, lib/)
        "model": {"joint_code": True, "levels": [8, 8, 8, 5, 5, 5], "width": 32, "enc_blocks": [1, 1, 1],
                  "middle_blocks": 6, "dec_blocks": [1, 1, 1], "decoder": "release", "decoder_width": 1536,
                  "decoder_blocks": 6, "common_width": 96, "prior_width": 96, "prior_enc_blocks": [1, 1, 1],
                  "prior_middle_blocks": 6, "grading_mean": "dimensions", "discriminator": "release",
                  "disc_layers": 4},
        "stage1": {"steps": 300000, "batch_size": 8, "optimizer": "adamw", "lr": 5e-4, "lr_min": 5e-5,
                   "betas": [0.9, 0.9], "grad_clip": 0.0, "precision": "fp32", "psnr_loss": "pooled",
                   "missing_weight": 20.0, "available_weight": 5.0, "gan_loss": "lsgan", "gan_weight": 0.1,
                   "gan_start": 0.2, "disc_from_start": True, "disc_lr": 5e-5, "disc_lr_decay": False,
                   "disc_betas": [0.5, 0.9], "per_batch_mask": True, "augment": list(AUGMENT_KINDS)},
        "stage2": {"steps": 300000, "batch_size": 16, "optimizer": "adamw", "lr": 5e-4, "lr_min": 5e-5,
                   "betas": [0.9, 0.9], "grad_clip": 0.0, "precision": "fp32", "gan_weight": 0.0,
                   "per_batch_mask": True, "augment": list(AUGMENT_KINDS)},
    },
}


def with_protocol(section: dict, contrasts: list[str]) -> dict:
    """A CodeBrain experiment's section over its protocol's defaults (the section's own keys win), with the
    dataset's contrasts; an unknown protocol is left for validation to name, a section that is not a mapping too."""
    if not isinstance(section, dict):
        return section
    section = {**section}
    protocol = section.get("protocol", "paper")
    for part, defaults in PROTOCOLS.get(protocol, PROTOCOLS["paper"]).items():
        section[part] = {**copy.deepcopy(defaults), **(section.get(part) or {})}
    section["model"]["contrasts"] = list(contrasts)
    return section


class Experiment(BaseModel):
    """A CodeBrain experiment: {protocol, model, stage1, stage2}."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["codebrain"] = "codebrain"
    protocol: Literal[tuple(PROTOCOLS)] = "paper"
    model: ModelConfig
    stage1: TrainConfig
    stage2: TrainConfig

    @classmethod
    def from_dict(cls, section: dict, contrasts: list[str]) -> "Experiment":
        return cls.model_validate(with_protocol(section, contrasts))

    @model_validator(mode="after")
    def one_code_map_per_contrast(self) -> "Experiment":
        if self.model.joint_code and self.stage2.code_missing_weight != 1:
            raise ValueError("stage2.code_missing_weight: needs a code map per contrast (model.joint_code is on)")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(exclude={"method"})


class DirectExperiment(BaseModel):
    """The direct-regressor baseline, {method: direct, model, train}: model uses only the backbone keys
    (width, enc_blocks, middle_blocks, dec_blocks); CodeBrain's budget is stage1.steps + stage2.steps."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["direct"] = "direct"
    model: ModelConfig
    train: TrainConfig = TrainConfig()

    @property
    def protocol(self) -> str:
        return "direct"

    @classmethod
    def from_dict(cls, section: dict, contrasts: list[str]) -> "DirectExperiment":
        return cls.model_validate(with_defaults({"method": "direct", **section}, contrasts))

    def to_dict(self) -> dict:
        return self.model_dump()


def experiment_kind(section) -> str:
    """An experiment section's `method` (CodeBrain when it names none): the tag that picks its model."""
    return section.get("method", "codebrain") if isinstance(section, dict) else getattr(section, "method", None)


AnyExperiment = Annotated[Union[Annotated[Experiment, Tag("codebrain")], Annotated[DirectExperiment, Tag("direct")]],
                          Discriminator(experiment_kind)]


def with_defaults(section: dict, contrasts: list[str]) -> dict:
    """What validates an experiment section: a CodeBrain one over its protocol's defaults, either with the dataset's
    contrasts."""
    if experiment_kind(section) != "direct":
        return with_protocol(section, contrasts)
    return {**section, "model": {**(section.get("model") or {}), "contrasts": list(contrasts)}}


def parse_experiment(section: dict, contrasts: list[str]) -> Experiment | DirectExperiment:
    """An experiment's config section: CodeBrain (the default method) or the direct regressor."""
    return TypeAdapter(AnyExperiment).validate_python(with_defaults(section, contrasts))


def flatten(section: dict, prefix: str = "") -> dict:
    """{"model": {"width": 16}} -> {"model.width": 16} (MLflow params)."""
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stage_section(section: dict, stage: str) -> dict:
    """The part of an experiment's config one training step uses, so that a change elsewhere does not rerun it:
    Stage I ignores E_prior's keys and the stage2 section, Stage II the stage1 section; a direct experiment
    is used whole."""
    if section.get("method") == "direct":
        return section
    model = dict(section.get("model") or {})
    if stage == "stage1":
        model = {k: v for k, v in model.items() if k not in PRIOR_FIELDS}
    return {"protocol": section.get("protocol", "paper"), "model": model, stage: section.get(stage) or {}}


def split_experiments(experiments: dict) -> tuple[list[str], list[str]]:
    """(CodeBrain experiment names, direct-regressor names) of a validated config's experiments."""
    direct = [name for name, section in experiments.items() if experiment_kind(section) == "direct"]
    return sorted(set(experiments) - set(direct)), direct
