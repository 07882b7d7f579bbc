"""Two-stage training on a tiny synthetic slice store: data parallel = one process, kill and resume,
NaN guard, code cache, Stage II, MLflow records, refusals."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REALDATA
from helpers import CONTRASTS, MODEL, REPO, cli, make_store, run_cli

from codebrain.io import InputError
from codebrain.training.loop import GlobalBatches


def stage1_args(store, out, config, tmp_path):
    return ["train-stage1", "--store", store, "--out", out, "--contrasts", *CONTRASTS, "--config", json.dumps(config),
            "--results", tmp_path, "--run-record", f"{out}.run.json", "--dataset", "synthetic"]


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b, atol):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= atol, f"largest weight difference {worst}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """A tiny Stage I, its code cache and Stage II, through the CLI."""
    tmp = tmp_path_factory.mktemp("trained")
    config = {"model": MODEL, "stage1": {"steps": 12, "batch_size": 4, "validate_every": 6, "log_every": 3},
              "stage2": {"steps": 8, "batch_size": 4, "validate_every": 8, "log_every": 2}}
    run_cli(*stage1_args(store, tmp / "stage1.pt", config, tmp))
    run_cli("cache-codes", "--store", store, "--stage1", tmp / "stage1.pt", "--out-dir", tmp / "codes", "--contrasts",
        *CONTRASTS, "--results", tmp, "--dataset", "synthetic", "--run-record", tmp / "codes.run.json")
    run_cli("train-stage2", "--store", store, "--stage1", tmp / "stage1.pt", "--codes", tmp / "codes", "--out",
        tmp / "stage2.pt", "--contrasts", *CONTRASTS, "--config", json.dumps(config), "--results", tmp,
        "--dataset", "synthetic", "--run-record", tmp / "stage2.pt.run.json")
    return tmp


def test_global_batches_split_one_order_over_processes():
    whole = GlobalBatches(20, 4, seed=3, rank=0, world=1).epoch(2)
    halves = [GlobalBatches(20, 4, seed=3, rank=r, world=2).epoch(2) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == whole
    assert GlobalBatches(20, 4, seed=3, rank=0, world=1).epoch(2, start=3) == whole[3:]
    with pytest.raises(InputError, match="fewer than one batch"):
        GlobalBatches(3, 4, 0, 0, 1)


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(store, tmp_path):
    """DDP over 2 CPU processes with batch 2 each = one process with batch 4 (adversarial loss on)."""
    config = {"model": MODEL, "stage1": {"steps": 4, "batch_size": 4, "validate_every": 100, "log_every": 1,
                                         "gan_weight": 1.0}}
    cli(*stage1_args(store, tmp_path / "one.pt", config, tmp_path))
    cli(*stage1_args(store, tmp_path / "two.pt", config, tmp_path), processes=2)
    assert_same_weights(tmp_path / "one.pt", tmp_path / "two.pt", atol=1e-4)
    # and the check can fail: another seed gives other weights
    other = {**config, "stage1": {**config["stage1"], "seed": 1}}
    cli(*stage1_args(store, tmp_path / "other.pt", other, tmp_path))
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "one.pt", tmp_path / "other.pt", atol=1e-4)


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(store, tmp_path):
    config = {"model": MODEL, "stage1": {"steps": 30, "batch_size": 4, "checkpoint_every": 5, "validate_every": 15,
                                         "log_every": 5}}
    run_cli(*stage1_args(store, tmp_path / "straight.pt", config, tmp_path))

    out = tmp_path / "killed.pt"
    launch = [sys.executable, "-m", "codebrain.cli", *map(str, stage1_args(store, out, config, tmp_path))]
    process = subprocess.Popen(launch, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    state = tmp_path / "killed.pt.state"
    deadline = time.time() + 120
    while not (state / "checkpoint-10").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists(), "the run finished before it could be killed"
    assert (state / "checkpoint-10").exists()

    resumed = run_cli(*stage1_args(store, out, config, tmp_path))
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_weights(tmp_path / "straight.pt", out, atol=1e-6)
    payload = torch.load(out, weights_only=True)  # the best of the validations at steps 15 and 30, as straight
    assert payload["metrics"]["train/steps"] == 30 and payload["step"] in (15, 30)
    assert payload["step"] == torch.load(tmp_path / "straight.pt", weights_only=True)["step"]
    assert not state.exists(), "resume state is removed once the final checkpoint is written"


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    """The loop checks its losses only where it syncs anyway (here every third step, at the checkpoints): the
    error still names the first bad step, and no checkpoint after it is written."""
    store = make_store(tmp_path / "store", nan_slice=5)
    batches = GlobalBatches(16, 4, seed=0, rank=0, world=1)
    bad_step = next(e * 4 + b + 1 for e in range(10) for b, batch in enumerate(batches.epoch(e)) if 5 in batch)
    last_good = (bad_step - 1) // 3 * 3
    config = {"model": MODEL, "stage1": {"steps": 40, "batch_size": 4, "checkpoint_every": 3, "validate_every": 100,
                                         "log_every": 100}}
    result = run_cli(*stage1_args(store, tmp_path / "m.pt", config, tmp_path), check=False)
    assert result.returncode == 3
    assert f"error: non-finite loss at step {bad_step}: {{" in result.stderr and "'psnr_loss': nan" in result.stderr
    if last_good:
        assert f"checkpoint-{last_good}" in result.stderr
    saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "m.pt.state").glob("checkpoint-*"))
    assert max(saved, default=0) == last_good
    assert not (tmp_path / "m.pt").exists()


def test_the_guard_names_the_first_non_finite_step_and_only_its_losses(tmp_path):
    from codebrain.training.guard import NonFiniteGuard, TrainingDiverged
    from codebrain.training.loop import make_accelerator
    from codebrain.training.resume import ResumeState

    guard = NonFiniteGuard(make_accelerator(), ResumeState(tmp_path / "m.pt", "config"))
    guard({"psnr_loss": torch.tensor(-20.0), "quantiser_loss": torch.tensor(0.1)}, step=0)
    guard({"adversarial_loss": torch.tensor(0.7)}, step=0)
    guard.check()
    guard({"psnr_loss": torch.tensor(-21.0), "quantiser_loss": torch.tensor(0.1)}, step=1)
    guard({"adversarial_loss": torch.tensor(float("inf"))}, step=1)
    guard({"psnr_loss": torch.tensor(float("nan")), "quantiser_loss": torch.tensor(0.1)}, step=2)
    with pytest.raises(TrainingDiverged, match=r"step 2: \{'adversarial_loss': inf\}; last good checkpoint: none"):
        guard.check()


def test_code_cache_holds_stage1_codes_of_every_slice(trained, store):
    from codebrain.rebuild import load_stage1

    codes = np.load(trained / "codes" / "train.npy")
    slices = np.load(store / "train.npy")
    assert codes.dtype == np.uint8 and codes.shape == (16, 3, 3, 4, 4)  # slices x contrasts x d x h x w
    model, _ = load_stage1(trained / "stage1.pt")
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(slices.astype(np.float32))).numpy()
    assert np.array_equal(codes, expected)
    usage = json.loads((trained / "codes" / "codes.json").read_text())["splits"]["train"]
    indices = (codes.astype(np.int64) * np.array([1, 5, 25]).reshape(1, 1, 3, 1, 1)).sum(2)
    assert usage["codes_used"] == len(np.unique(indices))
    assert [sum(h) for h in usage["level_histograms"]] == [codes[:, :, 0].size] * 3


def test_stage2_checkpoint_is_self_contained_and_reports_both_stages(trained):
    payload = torch.load(trained / "stage2.pt", weights_only=True)
    assert payload["kind"] == "stage2" and payload["stage1"]["kind"] == "stage1"
    metrics = payload["metrics"]
    for key in ("val/psnr_stage2", "val/psnr_stage1", "val/psnr_zero", "val/code_accuracy_T1",
                "val/code_accuracy_brain_T1", "val/whole_code_accuracy_brain", "val/level_error_brain_PD"):
        assert np.isfinite(metrics[key]), key
    assert 0 <= metrics["val/code_accuracy"] <= 1


def test_runs_are_logged_to_mlflow(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    record = json.loads((trained / "stage1.pt.run.json").read_text())
    run = client.get_run(record["run_id"])
    assert run.data.tags["rule"] == "train_stage1" and run.data.tags["dataset"] == "synthetic"
    assert len(run.data.tags["config_hash"]) == 12 and run.data.tags["git_commit"]
    assert run.data.params["model.width"] == "4" and run.data.params["stage1.steps"] == "12"
    assert len(client.get_metric_history(run.info.run_id, "train/psnr_loss")) == 4  # every 3 of 12 steps
    assert "val/psnr_stage1" in run.data.metrics and "train/samples_per_s" in run.data.metrics
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "config.json"} <= artefacts
    codes_run = client.get_run(json.loads((trained / "codes.run.json").read_text())["run_id"])
    assert codes_run.data.metrics["train/codes_used"] >= 1
    stage2 = client.get_run(json.loads((trained / "stage2.pt.run.json").read_text())["run_id"])
    assert "val/code_accuracy" in stage2.data.metrics and "val/psnr_stage2" in stage2.data.metrics


def test_checkpoints_keep_the_best_weights_on_validation(trained):
    """keep: best (default): each stage's checkpoint holds the validated weights with the best one-missing PSNR,
    as MLflow's history of that stage's validations shows it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    for stage in ("stage1", "stage2"):
        run_id = json.loads((trained / f"{stage}.pt.run.json").read_text())["run_id"]
        history = client.get_metric_history(run_id, f"val/psnr_{stage}_one_missing")
        best = max(history, key=lambda m: (m.value, -m.step))  # the first of equal scores
        payload = torch.load(trained / f"{stage}.pt", weights_only=True)
        assert payload["step"] == best.step and payload["metrics"][f"val/psnr_{stage}_one_missing"] == best.value
        assert client.get_run(run_id).data.metrics["val/selected_step"] == best.step
    assert len(client.get_metric_history(run_id, "val/psnr_stage2_one_missing")) == 1  # Stage II: at its end only


def test_keep_last_and_keep_best_differ_only_when_an_earlier_step_validates_better(store, tmp_path):
    """Validation at every step of a run with a learning rate that makes it worse: best keeps an earlier step."""
    config = {"model": MODEL, "stage1": {"steps": 6, "batch_size": 4, "validate_every": 1, "lr": 0.3,
                                         "gan_weight": 0.0}}
    run_cli(*stage1_args(store, tmp_path / "best.pt", config, tmp_path))
    last = {**config, "stage1": {**config["stage1"], "keep": "last"}}
    run_cli(*stage1_args(store, tmp_path / "last.pt", last, tmp_path))
    best, final = (torch.load(tmp_path / f"{k}.pt", weights_only=True) for k in ("best", "last"))
    assert final["step"] == 6 and best["step"] < 6
    assert best["metrics"]["val/psnr_stage1_one_missing"] > final["metrics"]["val/psnr_stage1_one_missing"]
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "best.pt", tmp_path / "last.pt", atol=1e-6)


def test_training_flops_are_three_forward_passes_counted_by_hand(store):
    """The direct regressor's step: 3 x its forward FLOPs, counted here from each convolution's shape."""
    from codebrain.training.config import DirectExperiment
    from codebrain.training.direct import DirectStage
    from codebrain.training.flops import counting_flops
    from codebrain.training.loop import TrainingBatch, make_accelerator

    experiment = DirectExperiment.from_dict({"method": "direct", "model": MODEL, "train": {"batch_size": 4}},
                                            CONTRASTS)
    stage = DirectStage(experiment, make_accelerator())
    macs = []

    def count(conv, inputs, output):  # output elements x (input channels per group x kernel area)
        macs.append(output.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1])

    hooks = [m.register_forward_hook(count) for m in stage.model.modules() if isinstance(m, torch.nn.Conv2d)]
    image = torch.from_numpy(np.load(store / "train.npy")[:4].astype(np.float32))
    batch = TrainingBatch(image, torch.tensor([[True, False, True]] * 4), torch.zeros(4, dtype=torch.long), None, 0)
    _, flops = counting_flops(stage.train_step, batch, lambda losses: None)
    for hook in hooks:
        hook.remove()
    assert any(m.groups > 1 for m in stage.model.modules() if isinstance(m, torch.nn.Conv2d))  # depthwise ones too
    assert flops == 3 * 2 * sum(macs)


def test_an_augmented_stage2_counts_encoding_its_codes_as_one_forward_pass(store):
    """Augmented slices are not in the code cache: Stage I encodes them without gradients, 1 x its FLOPs."""
    from codebrain.models.reconstructor import Reconstructor
    from codebrain.training.config import parse_experiment
    from codebrain.training.loop import TrainingBatch, counted_step, make_accelerator
    from codebrain.training.stage2 import StageTwo

    experiment = parse_experiment({"model": MODEL, "stage2": {"batch_size": 4}}, CONTRASTS)
    stage1 = Reconstructor(experiment.model)
    stage = StageTwo(experiment, make_accelerator(), stage1, experiment.model)
    image = torch.from_numpy(np.load(store / "train.npy")[:4].astype(np.float32))
    mask, anchor = torch.tensor([[True, False, True]] * 4), torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        codes = stage1.encode(image)
    macs = []

    def count(conv, inputs, output):
        macs.append(output.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1])

    hooks = [m.register_forward_hook(count) for m in stage1.modules() if isinstance(m, torch.nn.Conv2d)]
    _, cached = counted_step(stage, TrainingBatch(image, mask, anchor, codes, 0), lambda losses: None)
    assert not macs  # cached codes: Stage I does not run
    _, augmented = counted_step(stage, TrainingBatch(image, mask, anchor, None, 0), lambda losses: None)
    for hook in hooks:
        hook.remove()
    assert macs and augmented - cached == 2 * sum(macs)


def test_stage1_flops_add_up_over_its_two_phases(store, tmp_path):
    """GAN from half the steps: the FLOPs are the mean of a run with the GAN throughout and one without."""
    flops = {}
    for name, gan in {"none": {"gan_weight": 0.0}, "all": {"gan_start": 0.0}, "half": {"gan_start": 0.5}}.items():
        config = {"model": MODEL, "stage1": {"steps": 4, "batch_size": 4, "validate_every": 100, **gan}}
        run_cli(*stage1_args(store, tmp_path / f"{name}.pt", config, tmp_path))
        flops[name] = torch.load(tmp_path / f"{name}.pt", weights_only=True)["metrics"]["train/flops"]
    assert flops["none"] < flops["half"] < flops["all"]
    assert flops["half"] == (flops["none"] + flops["all"]) / 2


def test_the_tuned_protocol_is_the_paper_with_the_study_winners():
    from codebrain.training.config import PROTOCOLS, parse_experiment

    paper, tuned = (parse_experiment({"protocol": name}, CONTRASTS).to_dict() for name in ("paper", "tuned"))
    changed = {key for key in paper["model"] if paper["model"][key] != tuned["model"][key]}
    assert changed == set(PROTOCOLS["tuned"]["model"]) and tuned["model"]["finetune_decoder"]
    assert paper["stage1"] == tuned["stage1"] and paper["stage2"] == tuned["stage2"]


def test_code_map_weights_favour_missing_contrasts():
    from codebrain.training.stage2 import code_map_weights

    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert code_map_weights(mask, 1.0) is None
    assert code_map_weights(mask, 4.0).tolist() == [[1.0, 4.0, 1.0], [4.0, 4.0, 1.0]]


def test_refusals_name_the_mismatch(trained, store, tmp_path):
    other_store = tmp_path / "other"
    other_store.mkdir()
    summary = json.loads((store / "store.json").read_text())
    (other_store / "store.json").write_text(json.dumps({**summary, "contrasts": ["T1", "T2", "FLAIR"]}))
    for split in ("train", "val"):
        os.symlink(store / f"{split}.npy", other_store / f"{split}.npy")
    result = run_cli("cache-codes", "--store", other_store, "--stage1", trained / "stage1.pt", "--out-dir", tmp_path / "c",
                 "--contrasts", "T1", "T2", "FLAIR", "--results", tmp_path, check=False)
    assert result.returncode == 2 and "contrasts" in result.stderr and "FLAIR" in result.stderr

    config = {"model": {**MODEL, "code_dim": 4}}
    result = run_cli("train-stage2", "--store", store, "--stage1", trained / "stage1.pt", "--codes", trained / "codes",
                 "--out", tmp_path / "s2.pt", "--contrasts", *CONTRASTS, "--config", json.dumps(config),
                 "--results", tmp_path, check=False)
    assert result.returncode == 2 and "code_dim: checkpoint has 3, expected 4" in result.stderr

    result = run_cli("cache-codes", "--store", store, "--stage1", trained / "stage2.pt", "--out-dir", tmp_path / "c",
                 "--contrasts", *CONTRASTS, "--results", tmp_path, check=False)
    assert result.returncode == 2 and "'stage2' checkpoint, expected 'stage1'" in result.stderr

    result = run_cli(*stage1_args(store, tmp_path / "x.pt", {"model": {"widht": 4}}, tmp_path), check=False)
    assert result.returncode == 2 and "widht" in result.stderr


def first_logged_step(uri, run_record, metric):
    from mlflow.tracking import MlflowClient

    run_id = json.loads(Path(run_record).read_text())["run_id"]
    return min(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


def check_release(stage1, prior, codes, experiment, tmp_path):
    """One joint code of all contrasts at 8,8,8,5,5,5 levels; the release decoder gives every contrast at once; the
    pooled PSNR loss weights 5 (given) / 20 (missing); no clipping, fp32; D trains from the first step, its
    generator term (an LSGAN) from 20 % of the steps. Against the authors' code: tests/test_release.py."""
    from codebrain.models.reconstructor import ReleaseDecoder

    assert (codes.dtype, codes.shape) == (np.uint8, (16, 1, 6, 4, 4)) and stage1.cfg.levels == [8, 8, 8, 5, 5, 5]
    assert isinstance(stage1.decoder, ReleaseDecoder)
    image = torch.rand(2, 3, 16, 16)
    latent = stage1.quantiser.codes_to_latent(stage1.encode(image)[:, 0])
    assert stage1.decoder(latent, stage1.common_features(image)).shape == (2, 3, 16, 16)
    stage = experiment["stage1"]
    assert (stage["psnr_loss"], stage["available_weight"], stage["missing_weight"], stage["gan_loss"]) == \
        ("pooled", 5.0, 20.0, "lsgan")
    assert (stage["grad_clip"], stage["precision"], stage["disc_from_start"]) == (0.0, "fp32", True)
    uri, record = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "stage1.pt.run.json"
    generator_term_from = first_logged_step(uri, record, "train/adversarial_loss")
    assert generator_term_from - first_logged_step(uri, record, "train/psnr_loss") == int(stage["gan_start"] * stage["steps"])
    return 0  # D's first logged step: the first


def check_vq(stage1, prior, codes, experiment, tmp_path):
    """One codebook index per contrast and position, a commitment loss that is not FSQ's zero."""
    assert (codes.dtype, codes.shape) == (np.uint16, (16, 3, 1, 4, 4)) and codes.max() < 300
    _, _, quantiser_loss = stage1.quantiser(torch.randn(2, stage1.cfg.code_dim, 4, 4))
    assert quantiser_loss.item() > 0


def check_ce(stage1, prior, codes, experiment, tmp_path):
    """The paper's CLS ablation: E_prior gives L classes per code dimension (5 x 3 logits a map), not L - 1 grading
    bits, and its prediction is each dimension's most likely class."""
    from codebrain.models.grading import ClassTarget

    assert isinstance(prior.target, ClassTarget) and prior.head.out_channels == 3 * 5 * 3  # maps x L x d
    logits = prior(torch.rand(2, 3, 16, 16), torch.tensor([[True, False, True]] * 2))  # B x maps x d*L x h x w
    by_hand = logits.unflatten(2, (3, 5)).argmax(3)
    assert torch.equal(prior.predict(logits).long(), by_hand)


def check_continuous(stage1, prior, codes, experiment, tmp_path):
    """Unrounded codes, and no F_c: E_s is gone and D_a's fusion sees the code alone."""
    assert (codes.dtype, codes.shape) == (np.float16, (16, 3, 3, 4, 4))
    assert not np.allclose(codes, np.round(codes))
    assert stage1.common is None and stage1.common_features(torch.rand(1, 3, 16, 16)) is None
    assert stage1.decoder.fuse.in_channels == stage1.cfg.code_dim


def check_no_skips(stage1, prior, codes, experiment, tmp_path):
    """D_a without F_c's skips; E_prior sees the availability bits and decodes expected levels; missing maps
    weigh 4 in the code loss."""
    assert not stage1.decoder.skips
    first_conv = next(m for m in prior.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 2 * 3  # the masked stack and its availability planes
    logits = prior(torch.rand(2, 3, 16, 16), torch.tensor([[True, False, True]] * 2))
    expected_levels = prior.decoded_codes(logits)
    assert not torch.equal(expected_levels, expected_levels.round())  # sum_j j P(level = j), not a count
    assert experiment["stage2"]["code_missing_weight"] == 4.0


def check_augmented(stage1, prior, codes, experiment, tmp_path):
    """Each stage's transforms reach its training (what they do to the slices and to Stage II's FLOPs:
    tests/test_slices.py and test_an_augmented_stage2_counts_encoding_its_codes_as_one_forward_pass)."""
    assert experiment["stage1"]["augment"] == ["flip", "rot90", "affine", "elastic"]
    assert experiment["stage2"]["augment"] == ["flip"]


VARIANTS = {
    "release": ({"protocol": "release", "model": {"decoder_width": 16, "decoder_blocks": 1, "common_width": 4,
                                                   "levels": [8, 8, 8, 5, 5, 5]}}, check_release),
    "vq": ({"model": {"quantiser": "vq", "codebook_size": 300}}, check_vq),
    "ce": ({"model": {"prior_loss": "ce"}}, check_ce),
    "continuous": ({"model": {"quantiser": "continuous", "common_features": False}}, check_continuous),
    "no-skips": ({"model": {"decoder_skips": False, "prior_availability": True, "prior_decode": "expected"},
                  "stage2": {"code_missing_weight": 4.0}}, check_no_skips),
    "augmented": ({"model": {}, "stage1": {"augment": ["flip", "rot90", "affine", "elastic"]},
                   "stage2": {"augment": ["flip"]}}, check_augmented),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_protocols_and_ablations_train_through_both_stages_as_themselves(store, tmp_path, name):
    """Each variant through Stage I, the code cache and Stage II (the CLI in this process), then what makes it that
    variant, on the rebuilt networks; and for all, the GAN's start: the discriminator's first logged step is
    gan_start of the steps after the first."""
    from codebrain.checkpoints import load_checkpoint
    from codebrain.rebuild import codebrain_from

    variant, check = VARIANTS[name]
    config = {"protocol": variant.get("protocol", "paper"), "model": {**MODEL, **variant["model"]},
              "stage1": {"steps": 5, "batch_size": 4, "validate_every": 5, "log_every": 1, "gan_start": 0.4,
                         **variant.get("stage1", {})},
              "stage2": {"steps": 2, "batch_size": 4, "validate_every": 2, **variant.get("stage2", {})}}
    run_cli(*stage1_args(store, tmp_path / "stage1.pt", config, tmp_path))
    run_cli("cache-codes", "--store", store, "--stage1", tmp_path / "stage1.pt", "--out-dir", tmp_path / "codes",
            "--contrasts", *CONTRASTS, "--results", tmp_path)
    run_cli("train-stage2", "--store", store, "--stage1", tmp_path / "stage1.pt", "--codes", tmp_path / "codes",
            "--out", tmp_path / "stage2.pt", "--contrasts", *CONTRASTS, "--config", json.dumps(config),
            "--results", tmp_path)
    payload = load_checkpoint(tmp_path / "stage2.pt", "stage2")
    stage1, prior, _ = codebrain_from(payload)
    experiment = torch.load(tmp_path / "stage1.pt", weights_only=True)["experiment"]
    gan_from = check(stage1, prior, np.load(tmp_path / "codes" / "train.npy"), experiment, tmp_path)
    uri, record = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "stage1.pt.run.json"
    assert first_logged_step(uri, record, "train/disc_loss") - first_logged_step(uri, record, "train/psnr_loss") \
        == (gan_from if gan_from is not None else int(0.4 * 5))
    assert np.isfinite(payload["metrics"]["val/psnr_stage2"])


def test_a_finetuned_decoder_starts_as_stage1s_and_learns_to_decode_the_predicted_codes(trained, store, tmp_path):
    from codebrain.rebuild import load_codebrain, load_stage1
    from codebrain.models.config import ModelConfig
    from codebrain.training.loop import TrainingBatch, counted_step, make_accelerator
    from codebrain.training.config import parse_experiment
    from codebrain.training.stage2 import StageTwo

    config = {"model": {**MODEL, "finetune_decoder": True}, "stage2": {"steps": 6, "batch_size": 4, "keep": "last"}}
    stage1, payload = load_stage1(trained / "stage1.pt")
    stage = StageTwo(parse_experiment(config, CONTRASTS), make_accelerator(), stage1,
                     ModelConfig.from_dict({**payload["model_config"], "finetune_decoder": True}))
    prior = stage.accelerator.unwrap_model(stage.model)
    assert all(torch.equal(a, b) for a, b in zip(prior.decoder.state_dict().values(), stage1.decoder.state_dict().values()))

    # the loss: the fine-tuned D_a's L1 on each missing (slice, contrast), here decoded one pair at a time
    image = torch.from_numpy(np.load(store / "train.npy")[:4].astype(np.float32))
    mask = torch.tensor([[True, False, True], [False, False, True], [True, True, False], [False, True, False]])
    masked = image * mask[:, :, None, None]
    with torch.no_grad():
        logits = prior(masked, mask)
        batch = stage.prepare(TrainingBatch(image, mask, torch.zeros(4), None, 0))
        loss = stage.decoder_loss(prior, logits, batch)
        codes, errors = prior.decoded_codes(logits), []
        for b, t in zip(*np.nonzero(~mask.numpy())):
            common = stage1.common_features(masked[b: b + 1])
            decoded = stage1.decode_code(codes[b: b + 1], common, int(t), prior.decoder)
            errors.append((decoded - image[b: b + 1, t]).abs().mean())
    assert loss.item() == pytest.approx(torch.stack(errors).mean().item(), rel=1e-5)

    # its cost: 3 x (2 x MACs) of one more decoder pass per missing pair, so fit counts per missing count
    macs = []

    def count(conv, inputs, output):
        macs.append(output.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1])

    hooks = [m.register_forward_hook(count) for m in prior.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    fewer = torch.tensor([[True, False, True]] * 4)
    _, flops_fewer = counted_step(stage, TrainingBatch(image, fewer, torch.zeros(4), None, 0), lambda losses: None)
    decoder_macs_4, macs = sum(macs), []
    _, flops_more = counted_step(stage, TrainingBatch(image, mask, torch.zeros(4), None, 0), lambda losses: None)
    for hook in hooks:
        hook.remove()
    assert stage.flops_key(TrainingBatch(image, mask, None, None, 0)) == 6 and sum(macs) == decoder_macs_4 * 6 / 4
    assert flops_more - flops_fewer == 3 * 2 * decoder_macs_4 * 2 / 4

    run_cli("train-stage2", "--store", store, "--stage1", trained / "stage1.pt", "--codes", trained / "codes", "--out",
        tmp_path / "stage2.pt", "--contrasts", *CONTRASTS, "--config", json.dumps(config), "--results", tmp_path)
    stage1_after, prior_after, _ = load_codebrain(tmp_path / "stage2.pt")
    changed = [not torch.equal(a, b) for a, b in zip(prior_after.decoder.state_dict().values(),
                                                     stage1_after.decoder.state_dict().values())]
    assert any(changed)  # the copy trained, Stage I's D_a did not
    history = torch.load(tmp_path / "stage2.pt", weights_only=True)["metrics"]
    assert np.isfinite(history["val/psnr_stage2"])


@pytest.mark.slow
def test_two_processes_fine_tune_the_decoder_as_one(trained, store, tmp_path):
    """A fine-tuned D_a is called through the unwrapped prior, outside DDP's forward: its gradients must still be
    averaged over processes (2 x batch 2 = 1 x batch 4, E_prior and the decoder alike)."""
    config = {"model": {**MODEL, "finetune_decoder": True},
              "stage2": {"steps": 4, "batch_size": 4, "validate_every": 100, "log_every": 1, "keep": "last"}}

    def train(out, processes):
        cli("train-stage2", "--store", store, "--stage1", trained / "stage1.pt", "--codes", trained / "codes",
            "--out", out, "--contrasts", *CONTRASTS, "--config", json.dumps(config), "--results", tmp_path,
            processes=processes)

    train(tmp_path / "one.pt", 1)
    train(tmp_path / "two.pt", 2)
    assert any(k.startswith("decoder.") for k in weights(tmp_path / "two.pt"))
    assert_same_weights(tmp_path / "one.pt", tmp_path / "two.pt", atol=1e-4)
    flops = [torch.load(tmp_path / f"{n}.pt", weights_only=True)["metrics"]["train/flops"] for n in ("one", "two")]
    assert flops[0] == flops[1] > 0  # each process counts its half (its own missing pairs); the steps sum them
    first = weights(tmp_path / "one.pt")  # and the decoder moved, so the comparison covers its training
    initial = torch.load(trained / "stage1.pt", weights_only=True)["model"]
    assert any(not torch.equal(first[k], initial[k]) for k in first if k.startswith("decoder."))


def test_evaluation_tables_cover_every_scenario_and_target(trained, store, tmp_path):
    run_cli("evaluate", "--model", trained / "stage2.pt", "--store", store, "--split", "test", "--out-dir", tmp_path,
        "--contrasts", *CONTRASTS, "--results", trained, "--dataset", "synthetic")
    table = pd.read_csv(tmp_path / "scenarios.csv", dtype={"scenario": str})
    assert {"scenario", "target", "n_inputs", "method", "psnr", "ssim", "mae", "psnr_brain"} <= set(table.columns)
    for method, rows in table.groupby("method"):
        assert len(rows) == 9, method  # 6 scenarios; 3 one-input x 2 targets + 3 two-input x 1 target
        assert set(zip(rows.scenario, rows.target)) == {(s, t) for s in ("100", "010", "001", "110", "101", "011")
                                                       for i, t in enumerate(CONTRASTS) if s[i] == "0"}
    summary = pd.read_csv(tmp_path / "summary.csv")
    all_pairs = summary[summary.group == "ALL"].set_index("method")
    assert (all_pairs.pairs == 9).all() and (summary[summary.group == "O->O"].pairs == 6).all()
    one_method = table[table.method == "CodeBrain"]
    assert all_pairs.loc["CodeBrain", "psnr"] == pytest.approx(one_method.psnr.mean(), abs=1e-3)
    assert "| 010 | T1 |" in (tmp_path / "tables.md").read_text()
    # BraSyn's 3D scores beside the slice means: a perfect Stage I would score 100; none is above it
    assert {"ssim_tumour_3d", "ssim_outside_3d", "psnr_brain_3d"} <= set(summary.columns)
    assert np.isfinite(all_pairs.psnr_brain_3d).all() and "BraSyn's 3D scores" in (tmp_path / "tables.md").read_text()
    codes = one_method.groupby("target").whole_code_accuracy_brain.mean()  # the code table: means over scenarios
    assert "| T2 | " in (tmp_path / "tables.md").read_text() and codes.between(0, 1).all()
    assert f"{codes['T2']:.3f}" in (tmp_path / "tables.md").read_text().split("Predicted codes")[1]
    # the figures' grids: exemplars a truth column + 6 scenarios by (image, error) rows per contrast; code maps
    # d = 3 columns by (Stage I, predicted) rows per contrast; 1.05 and 1.1 (1.1 and 1.15) inches a panel at 110 dpi
    import matplotlib.pyplot as plt

    for name, (height, width) in {"exemplars.png": (1.1 * 6, 1.05 * 7), "code_maps.png": (1.15 * 6, 1.1 * 3)}.items():
        pixels = plt.imread(tmp_path / name)
        assert np.allclose(pixels.shape[:2], (110 * height, 110 * width), atol=1), name
        assert pixels[..., :3].std() > 0.05, f"{name} is blank"


def test_four_contrasts_give_fourteen_scenarios_and_twenty_eight_pairs():
    from codebrain.evaluation.scenarios import CodeBrainImputer, DirectImputer, evaluate_scenarios
    from codebrain.models.config import ModelConfig
    from codebrain.models.direct import DirectRegressor
    from codebrain.models.prior import CodePrior
    from codebrain.models.reconstructor import Reconstructor

    contrasts = ["T1", "T1Gd", "T2", "FLAIR"]
    cfg = ModelConfig(contrasts=contrasts, **{k: v for k, v in MODEL.items() if not k.startswith("disc")})
    slices = np.random.default_rng(0).random((3, 4, 16, 16)).astype(np.float16)
    table = evaluate_scenarios(CodeBrainImputer(Reconstructor(cfg), CodePrior(cfg)), slices, contrasts, "cpu")
    assert table.scenario.nunique() == 14
    assert len(table[table.method == "stage2"]) == 28  # sum over k=1..3 of C(4,k) * (4-k)
    assert table[table.method == "stage2"].code_accuracy.between(0, 1).all()
    direct = evaluate_scenarios(DirectImputer(DirectRegressor(cfg)), slices, contrasts, "cpu")
    assert len(direct[direct.method == "direct"]) == 28 and direct.scenario.nunique() == 14


def test_direct_regressor_sees_the_availability_bits_and_keeps_given_contrasts():
    from codebrain.evaluation.scenarios import DirectImputer
    from codebrain.models.config import ModelConfig
    from codebrain.models.direct import DirectRegressor

    torch.manual_seed(0)
    model = DirectRegressor(ModelConfig(contrasts=CONTRASTS, width=4, enc_blocks=[1, 1], dec_blocks=[1, 1],
                                        middle_blocks=1))
    torch.nn.init.normal_(model.decoder.ending.weight)  # a fresh NAFNet's output ignores little, but not zero
    image = torch.rand(2, 3, 16, 16)
    zeros = torch.zeros_like(image)
    # the same (all-zero) pixels with different availability bits must give different predictions
    a = model(zeros, torch.tensor([[True, False, False]] * 2))
    b = model(zeros, torch.tensor([[False, True, False]] * 2))
    assert (a - b).abs().max() > 1e-4
    outputs, _ = DirectImputer(model)(image, np.array([True, False, True]))
    assert torch.equal(outputs["direct"][:, [0, 2]], image[:, [0, 2]])


def test_direct_regressor_trains_and_is_evaluated_like_codebrain(store, tmp_path):
    config = {"method": "direct", "model": {k: MODEL[k] for k in ("width", "enc_blocks", "dec_blocks", "middle_blocks")},
              "train": {"steps": 6, "batch_size": 4, "validate_every": 6, "checkpoint_every": 3, "log_every": 2}}
    run_cli("train-direct", "--store", store, "--out", tmp_path / "direct.pt", "--contrasts", *CONTRASTS,
        "--config", json.dumps(config), "--results", tmp_path, "--dataset", "synthetic")
    payload = torch.load(tmp_path / "direct.pt", weights_only=True)
    assert payload["kind"] == "direct" and payload["step"] == 6
    assert payload["metrics"]["val/psnr_direct"] > payload["metrics"]["val/psnr_zero"]
    assert not (tmp_path / "direct.pt.state").exists()
    run_cli("evaluate", "--model", tmp_path / "direct.pt", "--store", store, "--out-dir", tmp_path / "eval",
        "--contrasts", *CONTRASTS, "--results", tmp_path, "--dataset", "synthetic")
    table = pd.read_csv(tmp_path / "eval" / "scenarios.csv", dtype={"scenario": str})
    assert sorted(table.method.unique()) == ["direct regressor", "zero imputation"]
    assert len(table[table.method == "direct regressor"]) == 9
    result = run_cli("train-stage1", "--store", store, "--out", tmp_path / "x.pt", "--contrasts", *CONTRASTS,
                 "--config", json.dumps(config), "--results", tmp_path, check=False)
    assert result.returncode == 2 and "train-direct" in result.stderr


@pytest.mark.slow
def test_parallel_jobs_share_one_sqlite_store(tmp_path):
    """Four jobs starting together on a fresh SQLite store: no schema race, no 'database is locked'."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = ("import sys; from codebrain.tracking.tracker import Tracker; t = Tracker(True, sys.argv[1], 'parallel', sys.argv[2]); "
           "[t.log_metrics({'loss': i}, i) for i in range(15)]; t.finish(None)")
    processes = [subprocess.Popen([sys.executable, "-c", job, uri, f"job{i}"], stderr=subprocess.PIPE, text=True)
                 for i in range(4)]
    for process in processes:
        assert process.wait() == 0, process.stderr.read()[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job0", "job1", "job2", "job3"]
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 15 for r in runs)


def test_sqlite_artefacts_live_beside_the_database(tmp_path):
    """Not in ./mlruns of whatever directory a job runs in (MLflow's default for a SQLite store)."""
    from mlflow.tracking import MlflowClient

    store, elsewhere = tmp_path / "results", tmp_path / "cwd"
    elsewhere.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    job = ("import sys, pathlib; from codebrain.tracking.tracker import Tracker; t = Tracker(True, sys.argv[1], 'where', 'job'); "
           "pathlib.Path('note.txt').write_text('hello'); t.log_artifact('note.txt'); t.finish(None)")
    subprocess.run([sys.executable, "-c", job, uri], cwd=elsewhere, check=True)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("where").experiment_id])[0]
    assert run.info.artifact_uri.startswith((store / "mlartifacts").as_uri())
    assert (store / "mlartifacts").exists() and sorted(p.name for p in elsewhere.iterdir()) == ["note.txt"]


def test_a_held_store_lock_times_out_naming_its_holder(tmp_path):
    """A job stuck inside the SQLite store's lock no longer makes every other command wait forever."""
    from codebrain.tracking.lock import StoreLockTimeout, store_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    hold = "import sys, time\nfrom codebrain.tracking.lock import store_lock\nwith store_lock(sys.argv[1]):\n" \
           "    print('held', flush=True)\n    time.sleep(120)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockTimeout, match=rf"mlflow.db.lock: MLflow store locked for over 0.5 s by "
                                                   rf"pid {holder.pid} on \S+ since 20"):
            with store_lock(uri, timeout_s=0.5):
                pass
        result = subprocess.run([sys.executable, "-m", "codebrain.cli", "check-raw", "--root", REALDATA / "ixi-thick",
                                 "--layout", "ixi", "--contrasts", "T1", "T2", "--out", tmp_path / "m.tsv",
                                 "--dataset", "d", "--results", tmp_path], capture_output=True, text=True,
                                env={**os.environ, "CODEBRAIN_LOCK_TIMEOUT": "0.5", "MLFLOW_TRACKING_URI": ""})
        # the step's work is kept: its output is written, and its run waits for `codebrain sync-tracking`
        assert result.returncode == 0 and (tmp_path / "m.tsv").exists(), result.stderr
        assert re.search(rf"MLflow store {re.escape(uri)} failed \(StoreLockTimeout: .* by pid {holder.pid}",
                         result.stderr)
        assert f"MLflow runs go to {uri}" in result.stderr  # run by hand: it says where it logs
        assert "Traceback" not in result.stderr and len(list((tmp_path / "mlflow-pending").glob("*.json"))) == 1
    finally:
        holder.kill()
        holder.wait()
    with store_lock(uri, timeout_s=5):  # a killed holder's lock is free again
        pass
    synced = cli("sync-tracking", "--tracking-uri", uri, "--pending", tmp_path / "mlflow-pending")
    assert "1 pending run(s) logged" in synced.stdout and not list((tmp_path / "mlflow-pending").glob("*.json"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("d").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.metrics["subjects"] == 1 and run.data.tags["rule"] == "check_raw"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["m.tsv"]


def test_a_store_failing_mid_step_keeps_the_outputs_and_the_run_for_sync(tmp_path, monkeypatch, capsys):
    """The store takes the run, then fails (here: every artefact upload raises): the step still succeeds with its
    output, the calls the store missed wait in mlflow-pending/, and sync-tracking logs them into the same run."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from codebrain.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # mlflow.set_tracking_uri exports it: undone after the test
    upload = mlflow.log_artifact

    def broken(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database")

    monkeypatch.setattr(mlflow, "log_artifact", broken)
    code = main(["check-raw", "--root", str(REALDATA / "ixi-thick"), "--layout", "ixi", "--contrasts", "T1", "T2",
                 "--out", str(tmp_path / "m.tsv"), "--dataset", "d", "--tracking-uri", uri])
    assert code == 0 and (tmp_path / "m.tsv").exists()
    assert "attempt to write a readonly database" in capsys.readouterr().err
    pending = list((tmp_path / "mlflow-pending").glob("*.json"))
    assert len(pending) == 1
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("d").experiment_id
    (before,) = client.search_runs([experiment])
    assert before.info.status == "RUNNING" and before.data.metrics["subjects"] == 1  # logged before the failure

    monkeypatch.setattr(mlflow, "log_artifact", upload)
    assert main(["sync-tracking", "--tracking-uri", uri]) == 0
    (after,) = client.search_runs([experiment])  # the same run, completed
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(after.info.run_id)] == ["m.tsv"]
    assert not list((tmp_path / "mlflow-pending").glob("*.json"))


def test_a_trained_model_waits_for_sync_when_the_store_fails_and_is_registered_then(store, tmp_path, monkeypatch):
    """The store fails from the checkpoint upload on: training still ends with its checkpoint; the model's logging
    and registration wait in mlflow-pending/ and sync-tracking registers it into the same run, with its inputs."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from codebrain.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    upload = mlflow.log_artifact

    def broken(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database")

    monkeypatch.setattr(mlflow, "log_artifact", broken)
    config = {"method": "direct", "model": {k: MODEL[k] for k in ("width", "enc_blocks", "dec_blocks", "middle_blocks")},
              "train": {"steps": 2, "batch_size": 4, "validate_every": 2, "log_every": 2}}
    assert main(["train-direct", "--store", str(store), "--out", str(tmp_path / "direct.pt"), "--contrasts", *CONTRASTS,
                 "--config", json.dumps(config), "--dataset", "synthetic", "--experiment", "plain",
                 "--tracking-uri", uri]) == 0
    assert (tmp_path / "direct.pt").exists()
    client = MlflowClient(uri)
    assert not client.search_registered_models()
    monkeypatch.setattr(mlflow, "log_artifact", upload)
    assert main(["sync-tracking", "--tracking-uri", uri]) == 0
    (version,) = client.search_model_versions("name = 'synthetic-plain'")
    run = client.get_run(version.run_id)
    assert run.data.tags["rule"] == "train_direct" and run.info.status == "FINISHED"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {f"{store.parent.name}/train", f"{store.parent.name}/val"}
    assert client.get_model_version_by_alias("synthetic-plain", "champion").version == version.version


def test_a_bug_in_our_logging_fails_the_training_step(store, tmp_path, monkeypatch, capsys):
    """A bug in registry.log_imputer (here a KeyError) is not a failing store: the step fails with the traceback,
    and no run waits offline as if the store were at fault."""
    from codebrain.cli import main
    from codebrain.tracking import offline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    def buggy(*args, **kwargs):
        raise KeyError("model.version")

    monkeypatch.setitem(offline.OUR_LOGGERS, "log_imputer", buggy)
    config = {"method": "direct", "model": {k: MODEL[k] for k in ("width", "enc_blocks", "dec_blocks", "middle_blocks")},
              "train": {"steps": 2, "batch_size": 4, "validate_every": 2, "log_every": 2}}
    with pytest.raises(KeyError, match="model.version"):
        main(["train-direct", "--store", str(store), "--out", str(tmp_path / "direct.pt"), "--contrasts", *CONTRASTS,
              "--config", json.dumps(config), "--dataset", "synthetic", "--experiment", "plain", "--tracking-uri", uri])
    assert not list((tmp_path / "mlflow-pending").glob("*.json"))
    assert "MLflow store" not in capsys.readouterr().err  # not reported as the store's failure


def test_code_diagnostics_by_hand():
    """Two code positions of which one is brain, d' = 2: counts worked out by hand."""
    from codebrain.evaluation.scenarios import code_diagnostics

    true = torch.tensor([[[[0, 3]], [[2, 1]]]], dtype=torch.uint8)  # 1 x d'=2 x h=1 x w=2
    predicted = torch.tensor([[[[0, 1]], [[4, 1]]]], dtype=torch.uint8)
    brain = torch.tensor([[[True, False]]])  # only position 0 is brain
    found = code_diagnostics(predicted, true, brain, levels=True)
    assert found["code_accuracy"].item() == pytest.approx(2 / 4)  # entries (0,0) and (1,1) right
    assert found["code_accuracy_brain"].item() == pytest.approx(1 / 2)  # at position 0: dim 0 right, dim 1 off by 2
    assert found["whole_code_accuracy_brain"].item() == 0.0
    assert found["level_error_brain"].item() == pytest.approx((0 + 2) / 2)
    both_right = code_diagnostics(true, true, brain, levels=False)
    assert both_right["whole_code_accuracy_brain"].item() == 1.0 and "level_error_brain" not in both_right
    no_brain = code_diagnostics(predicted, true, torch.zeros_like(brain), levels=True)
    assert torch.isnan(no_brain["code_accuracy_brain"]).all() and no_brain["code_accuracy"].item() == 0.5


def test_code_diagnostics_of_a_perfect_prior_and_the_evaluation_means():
    """E_prior that returns Stage I's own codes scores 1 everywhere and level error 0; the evaluation table
    carries every diagnostic per (scenario, target) and the per-target means."""
    from codebrain.evaluation.evaluate import code_means, code_table
    from codebrain.evaluation.scenarios import CODE_METRICS, CodeBrainImputer, evaluate_scenarios
    from codebrain.models.config import ModelConfig
    from codebrain.models.reconstructor import Reconstructor

    cfg = ModelConfig(contrasts=["T1", "T2", "PD"], **{k: v for k, v in MODEL.items() if not k.startswith("disc")})
    stage1 = Reconstructor(cfg)

    class Oracle(torch.nn.Module):  # "predicts" the true codes of the (unmasked) image it was handed last
        def forward(self, masked, scenario_mask):
            return self.image

        def predict(self, image):
            return stage1.encode(image)

        decoded_codes = predict
        decoder = None  # decodes with Stage I's D_a (no fine-tuned copy)

    oracle = Oracle()
    imputer = CodeBrainImputer(stage1, oracle)
    slices = np.zeros((2, 3, 16, 16), np.float32)
    slices[:, :, 4:12, 4:12] = np.random.default_rng(0).random((2, 3, 8, 8)) * 0.5 + 0.5

    def call(image, available):
        oracle.image = image
        return imputer(image, available)

    table = evaluate_scenarios(call, slices, cfg.contrasts, "cpu")
    rows = table[table.method == "stage2"]
    assert len(rows) == 9 and set(CODE_METRICS) <= set(rows.columns)
    assert (rows.code_accuracy == 1).all() and (rows.whole_code_accuracy_brain == 1).all()
    assert (rows.level_error_brain == 0).all()
    means = code_means(table)
    assert list(means.target) == ["T1", "T2", "PD"] and (means.code_accuracy_brain == 1).all()
    assert "whole codes right (brain)" in code_table(means)


@pytest.mark.parametrize("config_name", ["config.yaml", "brats-sample.yaml", "phantom-ixi.yaml"])
def test_shipped_configs_give_codebrain_and_the_regressor_the_same_training_flops(config_name):
    import yaml

    from codebrain.training.budget import config_flops

    flops = config_flops(yaml.safe_load((REPO / "config" / config_name).read_text()))
    codebrain, direct = sum(flops["codebrain"].values()), flops["direct"]["direct"]
    assert direct == pytest.approx(codebrain, rel=0.001)  # within one regressor step


def test_the_tuned_study_experiment_has_the_regressors_training_flops():
    import yaml

    from codebrain.training.budget import config_flops

    config = yaml.safe_load((REPO / "config" / "brats-sample.yaml").read_text())
    study = yaml.safe_load((REPO / "config" / "study" / "issue13.yaml").read_text())["experiments"]
    flops = config_flops({**config, "experiments": {name: study[name] for name in ("codebrain-tuned", "direct")}})
    assert sum(flops["codebrain-tuned"].values()) == pytest.approx(flops["direct"]["direct"], rel=0.002)


def test_the_augmentation_study_gives_both_methods_the_same_training_flops():
    import yaml

    from codebrain.training.budget import config_flops

    config = yaml.safe_load((REPO / "config" / "brats-sample.yaml").read_text())
    config["experiments"] = yaml.safe_load((REPO / "config" / "study" / "issue13-augment.yaml").read_text())["experiments"]
    flops = config_flops(config)
    assert flops["codebrain-aug"]["stage2"] > config_flops({**config, "experiments": {
        "plain": {**config["experiments"]["codebrain-aug"], "stage2": {"steps": 500, "batch_size": 16}}}})["plain"]["stage2"]  # + encoding
    assert flops["direct-aug"]["direct"] == pytest.approx(sum(flops["codebrain-aug"].values()), rel=0.001)
