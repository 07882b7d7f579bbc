"""A bad config stops at start-up, before any job, with one line per bad key naming its path (codebrain/config.py).

The table runs through the functions Snakemake's start-up calls, in this process; one real `snakemake -n` shows
they are wired in and that one message lists every bad key at once."""

import json

import pytest
import yaml
from helpers import TINY, snakemake

# the tiny DAG's config with one experiment of each kind: paper (codebrain), tuned, release and direct
KINDS = {"tuned": {"protocol": "tuned"}, "release": {"protocol": "release", "model": {"width": 4}}}


def tiny_config() -> dict:
    config = json.loads(json.dumps(yaml.safe_load(TINY.read_text())))
    config["experiments"].update(json.loads(json.dumps(KINDS)))
    return config


def setter(*path, value):
    """An edit that sets config[path] = value, making the sections on the way."""
    def edit(config):
        section = config
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value
    return edit


def remover(*path):
    def edit(config):
        section = config
        for key in path[:-1]:
            section = section[key]
        del section[path[-1]]
    return edit


BAD = [  # (edit, the line's start): a wrong type, an unknown choice, an out-of-range number and an unknown key
    (setter("trainig", value={"gpus": 0}), "trainig: unknown key (allowed keys: dataset, download, evaluation"),
    (setter("results", value=["results"]), "results: ['results']: Input should be a valid string"),
    (setter("dataset", "layout", value="nifti"), "dataset.layout: 'nifti' is not one of ixi, brats, bids, msd"),
    (setter("dataset", "contrasts", value=["T1", "T3"]), "dataset.contrasts.1: 'T3' is not one of T1, T2, PD, FLAIR"),
    (setter("dataset", "labels", value="maybe"), "dataset.labels: 'maybe': Input should be a valid boolean"),
    (setter("dataset", "name", value="my data"), "dataset.name: 'my data': String should match pattern"),
    (setter("dataset", "reference", value="FLAIR"), "dataset.reference: FLAIR is not one of dataset.contrasts"),
    (lambda c: c["dataset"].update(contrasts=["T1", "FLAIR"], reference="T1"), "dataset.contrasts: ixi data have no FLAIR"),
    (setter("dataset", "on_missing_contrast", value="skip"), "dataset.on_missing_contrast: 'skip' is not one of drop, fail"),
    (remover("dataset", "root"), "dataset.root: required key missing"),
    (setter("phantom", "flavour", value="hcp"), "phantom.flavour: 'hcp' is not one of ixi, brats"),
    (setter("phantom", "n_subjects", value=2), "phantom.n_subjects: at least 3 (one per split)"),
    (setter("phantom", "downsample", value=0.5), "phantom.downsample: 0.5: Input should be greater than or equal to 1"),
    (setter("phantom", "noise_level", value=0.1), "phantom.noise_level: unknown key (allowed keys: bias,"),
    (setter("download", "urls", value="https://example.org/a.tar"), "download.urls: 'https://example.org/a.tar': Input should be a valid list"),
    (setter("registration", "method", value="syn"), "registration.method: 'syn' is not one of rigid, affine, none"),
    (setter("slices", "size", value="big"), "slices.size: 'big': Input should be a valid integer"),
    (setter("slices", "size", value=4), "slices.size: 4: Input should be greater than or equal to 8"),
    (setter("slices", "normalisation", value="zscore"), "slices.normalisation: 'zscore' is not one of minmax, percentile"),
    (setter("slices", "spacing", value=[1.0]), "slices.spacing: [1.0]: List should have at least 2 items"),
    (setter("slices", "upper_percentile", value=101), "slices.upper_percentile: 101: Input should be less than or equal to 100"),
    (setter("splits", "fractions", "train", value=0), "splits.fractions.train: 0: Input should be greater than 0"),
    (setter("splits", "fractions", "tain", value=0.5), "splits.fractions.tain: unknown key (allowed keys: test, train, val)"),
    (setter("tracking", "url", value="http://127.0.0.1:5000"), "tracking.url: unknown key (allowed keys: uri)"),
    (setter("training", "gpus", value=-1), "training.gpus: -1: not a GPU count (0 or more) nor 'all'"),
    (setter("training", "gpus", value="al"), "training.gpus: 'al': not a GPU count (0 or more) nor 'all'"),
    (setter("training", "mem_mb", value="lots"), "training.mem_mb: 'lots': Input should be a valid integer"),
    (setter("evaluation", "split", value="train"), "evaluation.split: 'train' is not one of test, val"),
    (setter("evaluation", "uncertainty_samples", value=-8), "evaluation.uncertainty_samples: -8: Input should be greater"),
    (setter("segmentation", "channels", value=[16]), "segmentation.channels: [16]: List should have at least 2 items"),
    (setter("segmentation", "lr", value=0), "segmentation.lr: 0: Input should be greater than 0"),
    (setter("segmentation", "stpes", value=10), "segmentation.stpes: unknown key (allowed keys: batch_size, channels"),
    (setter("experiments", value={}), "experiments: {}: Dictionary should have at least 1 item"),
    (setter("experiments", "my exp", value={}), "experiments.my exp: 'my exp': String should match pattern"),
    (setter("experiments", "codebrain", "method", value="diffusion"), "experiments.codebrain.method: 'diffusion' is not one of codebrain, direct"),
    (setter("experiments", "codebrain", "protocol", value="preprint"), "experiments.codebrain.protocol: 'preprint' is not one of paper, tuned, release"),
    (setter("experiments", "codebrain", "optimiser", value="adam"), "experiments.codebrain.optimiser: unknown key (allowed keys: method, model, protocol, stage1, stage2)"),
    (setter("experiments", "codebrain", "model", "quantiser", value="fqs"), "experiments.codebrain.model.quantiser: 'fqs' is not one of fsq, vq, continuous"),
    (setter("experiments", "codebrain", "model", "width", value="big"), "experiments.codebrain.model.width: 'big': Input should be a valid integer"),
    (setter("experiments", "codebrain", "model", "levels", value=1), "experiments.codebrain.model.levels"),
    (setter("experiments", "codebrain", "model", "widht", value=8), "experiments.codebrain.model.widht: unknown key (allowed keys: code_dim,"),
    (setter("experiments", "codebrain", "model", "enc_blocks", value=[1, 1, 1]), "experiments.codebrain.model.dec_blocks: must have one entry per encoder level"),
    (setter("experiments", "tuned", "model", "prior_enc_blocks", value=[1, 1]), "experiments.tuned.model.prior_enc_blocks: needs as many levels as model.enc_blocks"),
    (setter("experiments", "codebrain", "stage1", "lr", value="fast"), "experiments.codebrain.stage1.lr: 'fast': Input should be a valid number"),
    (setter("experiments", "codebrain", "stage1", "augment", value=["blur"]), "experiments.codebrain.stage1.augment.0: 'blur' is not one of elastic, flip, vflip, rot90, affine"),
    (setter("experiments", "codebrain", "stage2", "gan_start", value=2), "experiments.codebrain.stage2.gan_start: 2: Input should be less than or equal to 1"),
    (setter("experiments", "codebrain", "stage2", "stpes", value=5), "experiments.codebrain.stage2.stpes: unknown key (allowed keys: augment,"),
    (setter("experiments", "tuned", "model", "prior_decode", value="mean"), "experiments.tuned.model.prior_decode: 'mean' is not one of hard, expected"),
    (setter("experiments", "tuned", "stage2", "optimizer", value="sgd"), "experiments.tuned.stage2.optimizer: 'sgd' is not one of adam, adamw"),
    (setter("experiments", "tuned", "stage1", "steps", value=0), "experiments.tuned.stage1.steps: 0: Input should be greater than 0"),
    (setter("experiments", "release", "model", "finetune_decoder", value=True), "experiments.release.model.finetune_decoder: needs a code map per contrast"),
    (setter("experiments", "release", "stage2", "code_missing_weight", value=2.0), "experiments.release.stage2.code_missing_weight: needs a code map per contrast"),
    (setter("experiments", "release", "stage1", "bf16_residual", value=True), "experiments.release.stage1.bf16_residual: needs precision: bf16 (precision is fp32)"),
    (setter("experiments", "release", "stage1", "betas", value=[0.9]), "experiments.release.stage1.betas: [0.9]: List should have at least 2 items"),
    (setter("experiments", "release", "stage1", "keep", value="first"), "experiments.release.stage1.keep: 'first' is not one of best, last"),
    (setter("experiments", "release", "model", "decoder", value="mlp"), "experiments.release.model.decoder: 'mlp' is not one of unet, release"),
    (setter("experiments", "direct", "stage1", value={"steps": 5}), "experiments.direct.stage1: unknown key (allowed keys: method, model, train)"),
    (setter("experiments", "direct", "train", "steps", value=0), "experiments.direct.train.steps: 0: Input should be greater than 0"),
    (setter("experiments", "direct", "train", "batch", value=4), "experiments.direct.train.batch: unknown key (allowed keys: augment,"),
    (setter("experiments", "direct", "model", "width", value=-4), "experiments.direct.model.width: -4: Input should be greater than 0"),
    (setter("experiments", "direct", "train", "grad_clip", value="off"), "experiments.direct.train.grad_clip: 'off': Input should be a valid number"),
]


def start_up_error(config: dict, tmp_path) -> str:
    """What Snakemake's start-up says of a config (the Snakefile's validate_config, then onstart's
    start_invocation): its error, else ""."""
    from snakemake.exceptions import WorkflowError

    from codebrain.tracking.runs import tracking_uri
    from codebrain.workflow import start_invocation, validate_config

    try:
        validate_config(config)
        start_invocation(config, tracking_uri(config["tracking"]["uri"], tmp_path / "results"), True, [], 0)
    except WorkflowError as err:
        return str(err)
    return ""


def test_the_table_covers_every_level_and_kind():
    paths = [line.split(":")[0] for _, line in BAD]
    assert len(BAD) >= 30
    sections = {"dataset", "phantom", "download", "registration", "slices", "splits", "tracking", "training",
                "evaluation", "segmentation", "experiments"}
    assert sections <= {path.split(".")[0] for path in paths}
    for kind in ("codebrain", "tuned", "release", "direct"):
        assert {p.split(".")[2] for p in paths if p.startswith(f"experiments.{kind}.")} >= \
               ({"model", "train"} if kind == "direct" else {"model", "stage1", "stage2"}), kind


def test_the_unedited_config_starts(tmp_path):
    assert start_up_error(tiny_config(), tmp_path) == ""


@pytest.mark.parametrize("edit,line", BAD, ids=[line.split(":")[0] for _, line in BAD])
def test_a_bad_key_stops_start_up_naming_its_path(tmp_path, edit, line):
    config = tiny_config()
    edit(config)
    error = start_up_error(config, tmp_path)
    assert any(row.startswith(line) for row in error.splitlines()), error
    assert not (tmp_path / "results").exists()  # before the store or any job


@pytest.mark.parametrize("edit,message", [
    (setter("tracking", "uri", value="http://127.0.0.1:9"), "tracking.uri: MLflow server http://127.0.0.1:9 is not reachable"),
    (setter("training", "gpus", value=64), "training.gpus: 64 GPUs per job, but this machine has"),
])
def test_what_only_the_machine_knows_stops_start_up_too(tmp_path, edit, message):
    config = tiny_config()
    edit(config)
    assert message in start_up_error(config, tmp_path)


def test_defaults_are_the_step_classes_own():
    """validate_config fills the defaults from the classes the steps compute with: one source of truth."""
    from codebrain.data.slices import SliceConfig
    from codebrain.models.segmenter import SegmenterConfig
    from codebrain.workflow import validate_config

    config = {"dataset": {"name": "d", "layout": "ixi", "root": "r", "contrasts": ["T1", "T2"], "reference": "T1"}}
    validate_config(config)
    assert config["slices"] == SliceConfig().model_dump()
    assert config["segmentation"] == SegmenterConfig(contrasts=["T1", "T2"]).model_dump()
    assert config["experiments"] == {"codebrain": {}} and "phantom" not in config


def test_a_cli_config_names_each_bad_key(tmp_path):
    """train-stage1 --config gets the same one line per key, under --config."""
    from helpers import run_cli

    result = run_cli("train-stage1", "--store", str(tmp_path), "--contrasts", "T1", "T2", "--out", str(tmp_path / "s1.pt"),
                     "--config", json.dumps({"model": {"quantiser": "fqs"}, "stage1": {"lr": "fast"}}), check=False)
    assert result.returncode == 2
    assert "--config.model.quantiser: 'fqs' is not one of fsq, vq, continuous" in result.stderr
    assert "--config.stage1.lr: 'fast': Input should be a valid number" in result.stderr


def test_every_bad_key_stops_snakemake_itself_in_one_message(tmp_path):
    config = tiny_config()
    for edit, _ in BAD[:3] + BAD[36:40]:
        edit(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", configfile=bad, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for _, line in BAD[:3] + BAD[36:40]:
        assert line in output
    assert "Traceback" not in output and not (tmp_path / "results").exists()
