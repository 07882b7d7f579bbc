"""The pipeline's configuration as one typed model: what `snakemake` validates at start-up and the steps read.

Every section is a pydantic model that forbids unknown keys; the sections a step computes with are the step's own
classes (SliceConfig, PhantomConfig, SegmenterConfig, and each experiment's ModelConfig and TrainConfig), so their
defaults are the only defaults. A failed validation is one line per bad key, with its path (codebrain/validation.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, ValidationError,
                      field_validator, model_validator)

from codebrain.data.layouts import LAYOUT_CONTRASTS, MATCHERS
from codebrain.data.phantom import FLAVOURS, PhantomConfig
from codebrain.data.slices import SliceConfig
from codebrain.models.config import Contrast
from codebrain.models.segmenter import SegmenterConfig
from codebrain.training.config import AnyExperiment, with_defaults
from codebrain.validation import error_lines

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dataset(Section):
    name: Name  # results subfolder and MLflow experiment
    layout: Literal[tuple(MATCHERS)]  # codebrain/data/layouts.py MATCHERS
    root: str  # raw data folder (the phantom writes here)
    contrasts: Annotated[list[Contrast], Field(min_length=2)]
    reference: Contrast  # the contrast the others are registered to
    labels: bool = False  # subjects carry a seg label volume
    on_missing_contrast: Literal["drop", "fail"] = "drop"

    @model_validator(mode="after")
    def contrasts_of_the_layout(self) -> "Dataset":
        if len(set(self.contrasts)) != len(self.contrasts):
            raise ValueError(f"contrasts: {self.contrasts} names a contrast twice")
        if self.reference not in self.contrasts:
            raise ValueError(f"reference: {self.reference} is not one of dataset.contrasts {self.contrasts}")
        if missing := [c for c in self.contrasts if c not in LAYOUT_CONTRASTS[self.layout]]:
            raise ValueError(f"contrasts: {self.layout} data have no {', '.join(missing)} "
                             f"(they have {LAYOUT_CONTRASTS[self.layout]})")
        return self


class Download(Section):
    urls: list[str] = []  # URL, optionally with #sha256=HEX
    dest: str | None = None  # folder for the archives (default: <results>/<dataset>/downloads)


class Registration(Section):
    method: Literal["rigid", "affine", "none"] = "rigid"  # none: the data come co-registered
    seed: NonNegativeInt = 0  # ANTs' metric sampling (data/registration.py)


class Fractions(Section):
    train: Annotated[float, Field(gt=0)] = 0.7
    val: NonNegativeFloat = 0.15
    test: NonNegativeFloat = 0.15


class Splits(Section):
    table: str | None = None  # TSV: subject, split, first_slice, last_slice
    fractions: Fractions = Fractions()
    seed: int = 0
    pinned: dict[str, Literal["train", "val", "test"]] = {}  # subject -> split, kept as the cohort grows


class Tracking(Section):
    uri: str = ""  # MLflow tracking URI; empty: MLFLOW_TRACKING_URI or sqlite:///<results>/mlflow.db


class Training(Section):
    # GPUs (= processes) per training job; 0 trains on the CPU; "all": what `--resources gpu=N` allows, else every
    # visible GPU, at least one (codebrain.workflow.resolve_gpus)
    gpus: int | str = 0
    cpu_processes: PositiveInt = 1  # data-parallel CPU processes when gpus is 0
    threads: PositiveInt = 2
    mem_mb: Annotated[int, Field(ge=500)] = 8000

    @field_validator("gpus")
    @classmethod
    def count_or_all(cls, gpus):
        if gpus == "all" or (isinstance(gpus, int) and gpus >= 0):
            return gpus
        raise ValueError(f"{gpus!r}: not a GPU count (0 or more) nor 'all'")


class Evaluation(Section):
    """Evaluation-only settings: changing them reruns evaluation, never training."""
    split: Literal["test", "val"] = "test"  # the split the metrics, imputed volumes and Dice come from
    batch_size: PositiveInt = 32
    uncertainty_samples: NonNegativeInt = 8  # K code samples per imputation (CodeBrain, FSQ); 0: off


class PipelineConfig(Section):
    results: str = "results"  # folder for all outputs; one subfolder per dataset.name
    dataset: Dataset
    phantom: PhantomConfig | None = None
    download: Download = Download()
    registration: Registration = Registration()
    slices: SliceConfig = SliceConfig()
    splits: Splits = Splits()
    tracking: Tracking = Tracking()
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    segmentation: SegmenterConfig = SegmenterConfig()  # the tumour U-Net (datasets with labels only)
    experiments: Annotated[dict[Name, AnyExperiment], Field(min_length=1)] = {"codebrain": {}}

    @model_validator(mode="before")
    @classmethod
    def dataset_contrasts(cls, config: Any) -> Any:
        """The dataset's contrasts into each experiment's model and the segmenter, each experiment over its
        protocol's defaults (sections of the wrong type are left for validation to name)."""
        dataset = config.get("dataset") if isinstance(config, dict) else None
        contrasts = dataset.get("contrasts") if isinstance(dataset, dict) else None
        if not isinstance(contrasts, list):
            return config
        config = {**config}
        experiments = config.get("experiments", {"codebrain": {}})
        if isinstance(experiments, dict):
            config["experiments"] = {name: with_defaults(section, contrasts) if isinstance(section, dict) else section
                                     for name, section in experiments.items()}
        if isinstance(segmentation := config.get("segmentation", {}), dict):
            config["segmentation"] = {**segmentation, "contrasts": contrasts}
        return config

    @model_validator(mode="after")
    def prior_fits_the_codes(self) -> "PipelineConfig":
        """E_prior's code maps are Stage I's size (checked here, not in Experiment: Stage I's own section leaves
        E_prior's keys out)."""
        for name, experiment in self.experiments.items():
            model = experiment.model
            if experiment.method == "codebrain" and len(model.prior_enc_blocks) != len(model.enc_blocks):
                raise ValueError(f"experiments.{name}.model.prior_enc_blocks: needs as many levels as "
                                 f"model.enc_blocks {model.enc_blocks} (the same code size)")
        return self

    @model_validator(mode="after")
    def phantom_fits_the_dataset(self) -> "PipelineConfig":
        if self.phantom is None:
            return self
        if self.phantom.n_subjects < 3:
            raise ValueError("phantom.n_subjects: at least 3 (one per split)")
        missing = set(self.dataset.contrasts) - set(FLAVOURS[self.phantom.flavour])
        if missing or (self.dataset.labels and self.phantom.flavour != "brats"):
            raise ValueError(f"phantom.flavour: {self.phantom.flavour} phantoms do not have "
                             f"{sorted(missing) or 'labels'} (dataset.contrasts / dataset.labels)")
        return self


def validated(config: dict) -> dict:
    """The config with every default filled, the experiments as written (their sections are the rule parameters:
    a default changed in code reruns through the code hash, not through them); ValueError listing every bad key."""
    try:
        pipeline = PipelineConfig.model_validate(config)
    except ValidationError as err:
        raise ValueError(error_lines(err, PipelineConfig)) from None
    filled = pipeline.model_dump(mode="json", exclude={"experiments"}, exclude_none=False)
    if pipeline.phantom is None:
        del filled["phantom"]
    return {**filled, "experiments": config.get("experiments", {"codebrain": {}})}
