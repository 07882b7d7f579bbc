"""Training configuration: one dataclass per stage, and the two protocols (paper text, authors' release).

An experiment's config section is {protocol, model, stage1, stage2}; the protocol supplies
defaults (docs/design.md, "Protocols") and the section's own keys win, so the paper's ablations and the
release are configs, not code edits.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from codebrain.data.augment import KINDS as AUGMENT_KINDS, check_kinds
from codebrain.models.config import PRIOR_FIELDS, ModelConfig


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16  # global batch: split across processes, so any process count sees the same batches
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-3
    lr_min: float = 1e-5  # cosine floor
    warmup_steps: int = 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    activation_checkpointing: bool = False  # recompute NAFBlock activations in backward: memory for ~10 % time
    # Stage I only: adversarial term and reconstruction weights
    gan_weight: float = 1.0  # lambda; 0 switches the discriminator off
    gan_loss: str = "vanilla"  # vanilla (BCE) | lsgan
    gan_start: float = 0.0  # fraction of the steps before the adversarial loss switches on
    disc_lr: float = 2e-4
    disc_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    missing_weight: float = 1.0  # PSNR-loss weight on masked contrasts (release: 20)
    available_weight: float = 0.0  # on available ones, joint decoder only (release: 5)
    per_batch_mask: bool = False  # release: one scenario per batch instead of per sample
    augment: list[str] = field(default_factory=list)  # flip, rot90, affine, elastic (data/augment.py), p = 1/2 each
    # Stage II only
    code_missing_weight: float = 1.0  # code-loss weight of a missing contrast's code map against a given one's
    # bookkeeping
    keep: str = "best"  # best: the checkpoint holds the weights with the best validation one-missing PSNR | last
    checkpoint_every: int = 500
    validate_every: int = 500
    log_every: int = 20
    val_batch_size: int = 64
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer {self.optimizer!r} is not adam or adamw")
        check_kinds(self.augment)
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep {self.keep!r} is not best or last")
        if self.gan_loss not in ("vanilla", "lsgan"):
            raise ValueError(f"gan_loss {self.gan_loss!r} is not vanilla or lsgan")


PROTOCOLS = {
    "paper": {"model": {}, "stage1": {}, "stage2": {"gan_weight": 0.0}},
    # the paper where it is explicit, with what won on validation in issue 13's study (docs/results.md): D_a fine-tuned
    # on the predicted codes
    "tuned": {"model": {"finetune_decoder": True}, "stage1": {}, "stage2": {"gan_weight": 0.0}},
    "release": {
        "model": {"joint_code": True, "levels": [8, 8, 8, 5, 5, 5], "decoder": "wide", "decoder_width": 1536,
                  "decoder_blocks": 6, "common_width": 96, "prior_width": 96, "disc_conditional": True},
        "stage1": {"optimizer": "adamw", "lr": 5e-4, "lr_min": 5e-5, "betas": [0.9, 0.9], "missing_weight": 20.0,
                   "available_weight": 5.0, "gan_loss": "lsgan", "gan_weight": 0.1, "gan_start": 0.2,
                   "disc_lr": 5e-5, "disc_betas": [0.5, 0.9], "per_batch_mask": True, "augment": list(AUGMENT_KINDS)},
        "stage2": {"optimizer": "adamw", "lr": 5e-4, "lr_min": 5e-5, "betas": [0.9, 0.9], "gan_weight": 0.0,
                   "per_batch_mask": True, "augment": list(AUGMENT_KINDS)},
    },
}


def dataclass_from(cls, section: dict, where: str):
    unknown = set(section) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    return cls(**section)


@dataclass
class Experiment:
    protocol: str
    model: ModelConfig
    stage1: TrainConfig
    stage2: TrainConfig

    @classmethod
    def from_dict(cls, section: dict, contrasts: list[str]) -> "Experiment":
        """{protocol, model, stage1, stage2} over the protocol's defaults; contrasts from the dataset."""
        unknown = set(section) - {"protocol", "model", "stage1", "stage2"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (protocol, model, stage1, stage2)")
        protocol = section.get("protocol", "paper")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {sorted(PROTOCOLS)}")
        merged = copy.deepcopy(PROTOCOLS[protocol])
        for part in ("model", "stage1", "stage2"):
            merged[part].update(section.get(part) or {})
        merged["model"]["contrasts"] = list(contrasts)
        return cls(protocol, dataclass_from(ModelConfig, merged["model"], "model"),
                   dataclass_from(TrainConfig, merged["stage1"], "stage1"),
                   dataclass_from(TrainConfig, merged["stage2"], "stage2"))

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "model": asdict(self.model), "stage1": asdict(self.stage1),
                "stage2": asdict(self.stage2)}


@dataclass
class DirectExperiment:
    """The direct-regressor baseline, {method: direct, model, train}: model uses only the backbone keys
    (width, enc_blocks, middle_blocks, dec_blocks); CodeBrain's budget is stage1.steps + stage2.steps."""
    model: ModelConfig
    train: TrainConfig
    protocol: str = "direct"

    @classmethod
    def from_dict(cls, section: dict, contrasts: list[str]) -> "DirectExperiment":
        unknown = set(section) - {"method", "model", "train"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} for method direct (model, train)")
        model = {**(section.get("model") or {}), "contrasts": list(contrasts)}
        return cls(dataclass_from(ModelConfig, model, "model"),
                   dataclass_from(TrainConfig, section.get("train") or {}, "train"))

    def to_dict(self) -> dict:
        return {"method": "direct", "model": asdict(self.model), "train": asdict(self.train)}


def parse_experiment(section: dict, contrasts: list[str]) -> Experiment | DirectExperiment:
    """An experiment's config section: CodeBrain (the default method) or the direct regressor."""
    method = section.get("method", "codebrain")
    if method == "direct":
        return DirectExperiment.from_dict(section, contrasts)
    if method != "codebrain":
        raise ValueError(f"method {method!r} is not codebrain or direct")
    return Experiment.from_dict({k: v for k, v in section.items() if k != "method"}, contrasts)


def config_hash(section: dict) -> str:
    return hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:12]


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


def split_experiments(experiments: dict, contrasts: list[str]) -> tuple[list[str], list[str]]:
    """(CodeBrain experiment names, direct-regressor names); every section is parsed, so a bad key fails at
    start-up with the experiment's name, not hours into a job."""
    codebrain, direct = [], []
    for name, section in experiments.items():
        try:
            experiment = parse_experiment(section, contrasts)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config experiments.{name}: {err}") from None
        (direct if isinstance(experiment, DirectExperiment) else codebrain).append(name)
    return sorted(codebrain), direct
