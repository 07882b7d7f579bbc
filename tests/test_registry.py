"""The MLflow side of a finished tiny DAG (SQLite store): a registered model version per experiment, loadable by
`models:/` URI in a fresh process with the checkpoint's own values; the slice store as every training and
evaluation run's dataset input; evaluation runs linked to the version they scored."""

import json
import os
import re
import shutil
import subprocess
import sys
from functools import partial

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
from helpers import REPO, cli, run_cli

from codebrain.evaluation.evaluate import load_imputer

EXPERIMENTS = {"codebrain": "stage2", "direct": "direct"}


@pytest.fixture(scope="module")
def store_uri(workdir):
    return f"sqlite:///{workdir[0] / 'results' / 'mlflow.db'}"


def client_for(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def test_every_experiment_is_a_registered_model_with_a_champion(store_uri):
    client = client_for(store_uri)
    names = {model.name: model for model in client.search_registered_models()}
    assert set(names) == {f"tiny-{experiment}" for experiment in EXPERIMENTS}
    for experiment, kind in EXPERIMENTS.items():
        champion = client.get_model_version_by_alias(f"tiny-{experiment}", "champion")
        run = client.get_run(champion.run_id)
        assert run.data.tags["rule"] == ("train_direct" if kind == "direct" else "train_stage2")
        assert float(champion.tags[f"val/psnr_{kind}"]) == pytest.approx(run.data.metrics[f"val/psnr_{kind}"])


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["codebrain", "direct"])
def test_a_registered_model_imputes_in_a_fresh_process_what_its_checkpoint_imputes(workdir, store_uri, tmp_path,
                                                                                  experiment):
    """mlflow.pyfunc.load_model("models:/tiny-<experiment>@champion") in a new interpreter, PD zeroed (missing)."""
    path, _ = workdir
    slices = np.load(path / "results" / "tiny" / "slices" / "test.npy").astype(np.float32)  # N x 3 x S x S
    inputs = {"T1": slices[:, 0], "T2": slices[:, 1], "PD": np.zeros_like(slices[:, 2])}
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = (f"import mlflow, numpy as np; mlflow.set_tracking_uri({store_uri!r}); "
              f"model = mlflow.pyfunc.load_model('models:/tiny-{experiment}@champion'); "
              f"inputs = dict(np.load({str(tmp_path / 'inputs.npz')!r})); "
              f"np.save({str(tmp_path / 'pd.npy')!r}, model.predict(inputs)['PD'])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    kind = EXPERIMENTS[experiment]
    checkpoint = path / "results" / "tiny" / "models" / experiment / f"{kind}.pt"
    imputer, method = load_imputer(checkpoint, ["T1", "T2", "PD"])
    import torch

    image = torch.from_numpy(np.stack([inputs["T1"], inputs["T2"], inputs["PD"]], 1))
    expected = imputer(image, np.array([True, True, False]))[0][method][:, 2].clamp(0, 1).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "pd.npy"), expected, atol=1e-6)


def registered_version(uri, experiment, checkpoint):
    """The registered version that holds this checkpoint (by its sha256 tag): the one a URI must resolve to."""
    from codebrain.io import sha256sum

    digest = sha256sum(checkpoint)
    versions = client_for(uri).search_model_versions(f"name = 'tiny-{experiment}'")
    return next(v.version for v in versions if v.tags.get("checkpoint.sha256") == digest)


def test_impute_and_bids_take_either_kind_of_model_by_path_and_by_uri(workdir, store_uri, tmp_path):
    """CodeBrain and the direct regressor alike: `codebrain impute` writes the same volume by path and by models:/
    URI, and `codebrain bids` the same again as a derivative; the two kinds impute differently (each model is
    used). A registered subject's volumes share one grid, so no registration stands in the way."""
    out = workdir[0] / "results" / "tiny"
    subject = sorted(p.name for p in (out / "registered").iterdir())[0]
    scans = {c: out / "registered" / subject / f"{c}.nii.gz" for c in ("T1", "T2")}
    inputs = [arg for c, scan in scans.items() for arg in ("--input", f"{c}={scan}")] + ["--target", "PD"]
    bids = tmp_path / "rawdata"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.10.0"}')
    for contrast, scan in scans.items():
        (bids / "sub-01" / "anat" / f"sub-01_{contrast}w.nii.gz").symlink_to(scan)
    env, imputed = {"MLFLOW_TRACKING_URI": store_uri}, {}
    for experiment in ("codebrain", "direct"):
        checkpoint = out / "models" / experiment / f"{EXPERIMENTS[experiment]}.pt"
        uri = f"models:/tiny-{experiment}/{registered_version(store_uri, experiment, checkpoint)}"
        volumes = []
        for n, model in enumerate((checkpoint, uri)):
            # in this process, the store named by the environment; CodeBrain's URI once as a user runs it
            impute = partial(cli, env=env) if (experiment, n) == ("codebrain", 1) else partial(run_cli, env=env)
            impute("impute", "--model", model, *inputs, "--out", tmp_path / f"{experiment}-{n}.nii.gz")
            run_cli("bids", bids, tmp_path / f"{experiment}-{n}", "participant", "--model", model, env=env)
            volumes += [tmp_path / f"{experiment}-{n}.nii.gz",
                        tmp_path / f"{experiment}-{n}" / "codebrain/sub-01/anat/sub-01_desc-imputed_PDw.nii.gz"]
        first, *others = [nib.load(v).get_fdata(dtype=np.float32) for v in volumes]
        assert first.max() > 0 and all(np.array_equal(first, other) for other in others), experiment
        imputed[experiment] = first
    assert np.abs(imputed["codebrain"] - imputed["direct"]).max() > 0.01
    missing = run_cli("impute", "--model", "models:/tiny-nothing@champion", *inputs, "--out", tmp_path / "c.nii.gz",
                      check=False, env=env)
    assert missing.returncode == 2 and "models:/tiny-nothing@champion: not in the model registry" in missing.stderr
    refused = run_cli("impute", "--model", out / "models" / "direct" / "direct.pt", *inputs,
                      "--out", tmp_path / "u.nii.gz", "--uncertainty", "2", check=False)  # no codes to sample
    assert refused.returncode == 2 and "the direct regressor has none" in refused.stderr
    assert not (tmp_path / "u.nii.gz").exists()


def test_runs_show_their_slice_store_and_evaluations_the_version_they_scored(workdir, store_uri):
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    client = client_for(store_uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment])
    store = json.loads((workdir[0] / "results" / "tiny" / "slices" / "store.json").read_text())
    for run in runs:
        rule = run.data.tags["rule"]
        inputs = {(d.dataset.name, next(t.value for t in d.tags if t.key == "split"), d.dataset.source_type)
                  for d in run.inputs.dataset_inputs}
        if rule in ("train_stage1", "train_stage2", "train_direct"):
            assert inputs == {("tiny/train", "train", "local"), ("tiny/val", "val", "local")}, rule
        elif rule == "evaluate_model":
            assert inputs == {("tiny/test", "test", "local")}
            name = f"tiny-{run.data.tags['experiment']}"
            version = client.get_model_version(name, run.data.tags["model.version"])
            assert run.data.tags["model.uri"] == f"models:/{name}/{version.version}"
    digests = {d.dataset.name: d.dataset for run in runs for d in run.inputs.dataset_inputs}
    assert len({dataset.digest for dataset in digests.values()}) == 3  # train, val, test differ
    spec = json.loads(digests["tiny/train"].schema)["mlflow_colspec"][0]["tensor-spec"]
    assert spec["shape"] == [store["splits"]["train"]["slices"], 3, store["size"], store["size"]]
    with _use_tracking_uri(store_uri):  # set_tracking_uri would leak into the other tests of this process
        found = mlflow.search_runs([experiment], filter_string="tags.rule = 'train_stage2'", output_format="list")
    assert {d.dataset.name for run in found for d in run.inputs.dataset_inputs} == {"tiny/train", "tiny/val"}


@pytest.mark.slow
def test_the_readme_screenshots_show_nested_runs_and_the_registered_model(workdir, tmp_path):
    """docs/mlflow_screenshots.py on the tiny DAG's store, as the README runs it (headless Chromium; CI installs it)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")) and not os.environ.get("CODEBRAIN_REQUIRE_CHROMIUM"):
        pytest.skip("no headless Chromium here (apt-get install chromium chromium-driver)")
    result = subprocess.run([sys.executable, str(REPO / "docs" / "mlflow_screenshots.py"), workdir[0] / "results",
                             "tiny", "--out", tmp_path], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs_page, model_page = result.stdout.strip().splitlines()[-2:]
    assert int(re.search(r"\((\d+) run links", runs_page)[1]) > 10  # the parent runs and one invocation's jobs
    assert int(re.search(r"(\d+) model links", runs_page)[1]) >= 2  # the two registered models beside their runs
    for name in ("mlflow-runs.png", "mlflow-model.png"):
        image = plt.imread(tmp_path / name)
        assert image.shape[1] == 1600 and image[..., :3].std() > 0.05, name  # a page, not a blank window
