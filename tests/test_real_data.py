"""The shipped real-data configs over folders of real-named files: each is the whole config (nothing of the phantom
demo leaks in), plans only its folder's subjects, fails before any job on a missing or empty root, downloads the
BraTS sample checked by sha256, and a copied project reruns nothing and writes nowhere else."""

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading

import pandas as pd
import pytest
import yaml

from conftest import REALDATA
from helpers import REPO, TINY, planned_jobs, snakemake, snakemake_command, workflow_copy

BRATS18 = REALDATA / "brats2018" / "Brats18_TCIA01_425_1"
BRATS23 = REALDATA / "brats2023" / "BraTS-GLI-00000-000"
IXI = REALDATA / "ixi-thick" / "IXI002-Guys-0828"


def brats_sample_folder(root):
    """Three subjects in the three BraTS namings of 2018-2021 (one real case, linked under each name)."""
    (root / BRATS18.name).mkdir(parents=True)
    for subject in ("BraTS2021_00007", "BraTS20_Training_001"):
        (root / subject).mkdir()
    for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
        source = BRATS18 / f"{BRATS18.name}_{suffix}.nii.gz"
        (root / BRATS18.name / source.name).symlink_to(source)
        for subject in ("BraTS2021_00007", "BraTS20_Training_001"):
            (root / subject / f"{subject}_{suffix}.nii.gz").symlink_to(source)
    return 3


def brats2023_folder(root):
    root.mkdir(parents=True)
    (root / BRATS23.name).symlink_to(BRATS23)
    return 1


def ixi_folder(root):
    for contrast in ("T1", "T2", "PD"):
        (root / f"IXI-{contrast}").mkdir(parents=True)
        name = f"IXI002-Guys-0828-{contrast}.nii.gz"
        (root / f"IXI-{contrast}" / name).symlink_to(IXI / f"ds_{name}")
    return 1


def msd_folder(root, subjects=("BRATS_001", "BRATS_002", "BRATS_003")):
    """Task01_BrainTumour's layout from the real BraTS 2023 case (every 4th voxel): 4D FLAIR, T1w, T1gd, T2w and the
    Decathlon's labels (1 oedema, 2 non-enhancing, 3 enhancing); macOS's "._" files beside them, as in its tarball."""
    import nibabel as nib
    import numpy as np

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    volumes = [np.asarray(nib.load(BRATS23 / f"{BRATS23.name}-{s}.nii.gz").dataobj)[::4, ::4, ::4]
               for s in ("t2f", "t1n", "t1c", "t2w")]
    seg = np.asarray(nib.load(BRATS23 / f"{BRATS23.name}-seg.nii.gz").dataobj)[::4, ::4, ::4]
    msd_labels = np.array([0, 2, 1, 3], np.uint8)[seg.astype(int)]  # BraTS 2023 -> Decathlon
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    for subject in subjects:
        nib.save(nib.Nifti1Image(np.stack(volumes, axis=-1), affine), root / "imagesTr" / f"{subject}.nii.gz")
        nib.save(nib.Nifti1Image(msd_labels, affine), root / "labelsTr" / f"{subject}.nii.gz")
        (root / "imagesTr" / f"._{subject}.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    return len(subjects)


def project(tmp_path, config_name):
    """A user's project folder: the shipped configs (split tables are read from config/) and the raw data."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path / "config" / config_name


def listing(root):
    return sorted((p.relative_to(root), p.is_symlink()) for p in root.rglob("*"))


@pytest.mark.parametrize("config_name,folder,make,direct", [
    ("brats-sample.yaml", "data/brats2018-sample", brats_sample_folder, True),
    ("brats.yaml", "data/BraTS2023", brats2023_folder, False),
    ("ixi.yaml", "data/IXI", ixi_folder, False),
    ("msd.yaml", "data/Task01_BrainTumour", msd_folder, False),
])
def test_a_shipped_config_plans_only_its_folders_subjects(tmp_path, config_name, folder, make, direct):
    """Before, Snakemake merged config/config.yaml under every --configfile: phantom jobs were planned into the
    user's raw folder, the demo's `direct` experiment ran everywhere, and ixi.yaml failed on the phantom flavour."""
    configfile = project(tmp_path, config_name)
    subjects = make(tmp_path / folder)
    before = listing(tmp_path / folder)
    planned = planned_jobs(tmp_path, configfile=configfile)
    assert "make_phantom_subject" not in planned and "download_raw" not in planned
    assert planned["extract_slices"] == subjects
    assert ("train_direct" in planned) == direct and planned["train_stage1"] == 1
    assert listing(tmp_path / folder) == before


@pytest.mark.parametrize("study", sorted(p.name for p in (REPO / "config" / "study").glob("*.yaml")))
def test_a_study_config_given_after_the_real_sample_config_plans_its_experiments(tmp_path, study):
    """The studies' README commands: `--configfile config/brats-sample.yaml config/study/<study>` over a folder of
    real-named files validates and plans a training job per experiment (the shipped ones and the study's)."""
    configfile = project(tmp_path, "brats-sample.yaml")
    brats_sample_folder(tmp_path / "data" / "brats2018-sample")
    result = subprocess.run(snakemake_command() + ["-d", str(tmp_path), "-n", "--configfile",
                                                   str(configfile), str(configfile.parent / "study" / study)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", result.stdout + result.stderr, re.M)}
    study_config = yaml.safe_load((configfile.parent / "study" / study).read_text())
    experiments = {**yaml.safe_load(configfile.read_text())["experiments"], **study_config["experiments"]}
    direct = sum(e.get("method") == "direct" for e in experiments.values())
    assert planned["train_direct"] == direct and planned["train_stage2"] == len(experiments) - direct
    name = study_config.get("dataset", {}).get("name", "brats2018-sample")
    assert f"results/{name}/" in result.stdout + result.stderr


@pytest.mark.slow
def test_decathlon_volumes_are_split_into_brats_files_with_2023_labels(tmp_path):
    import nibabel as nib
    import numpy as np

    configfile = project(tmp_path, "msd.yaml")
    config = yaml.safe_load(configfile.read_text())
    config["training"] = {"gpus": 0}  # the shipped config trains on a GPU; this machine has none
    configfile.write_text(yaml.safe_dump(config))
    msd_folder(tmp_path / "data" / "Task01_BrainTumour")
    assert planned_jobs(tmp_path, configfile=configfile)["split_msd_subject"] == 3
    snakemake(tmp_path, "results/msd-task01/manifest.tsv", configfile=configfile)
    split = tmp_path / "results" / "msd-task01" / "raw" / "BRATS_002"
    for contrast, suffix in [("t1ce", "t1c"), ("flair", "t2f")]:
        mine = nib.load(split / f"BRATS_002_{contrast}.nii.gz")
        original = np.asarray(nib.load(BRATS23 / f"{BRATS23.name}-{suffix}.nii.gz").dataobj)[::4, ::4, ::4]
        assert np.array_equal(mine.get_fdata(), original) and np.allclose(mine.affine, np.diag([4, 4, 4, 1]))
    seg = np.asarray(nib.load(BRATS23 / f"{BRATS23.name}-seg.nii.gz").dataobj)[::4, ::4, ::4]
    assert np.array_equal(np.asarray(nib.load(split / "BRATS_002_seg.nii.gz").dataobj), seg)  # back to 2023 labels
    manifest = pd.read_csv(tmp_path / "results" / "msd-task01" / "manifest.tsv", sep="\t")
    assert sorted(manifest.subject.unique()) == ["BRATS_001", "BRATS_002", "BRATS_003"] and len(manifest) == 15


@pytest.mark.parametrize("make_root,message", [
    (lambda root: None, r"raw data folder data/brats2018-sample does not exist"),
    (lambda root: root.mkdir(parents=True), r"raw data folder data/brats2018-sample holds no brats NIfTI files"),
    (lambda root: ixi_folder(root), r"raw data folder data/brats2018-sample holds no brats NIfTI files"),
])
def test_a_missing_or_empty_root_fails_before_any_job(tmp_path, make_root, message):
    configfile = project(tmp_path, "brats-sample.yaml")
    config = yaml.safe_load(configfile.read_text())
    config.pop("download")  # with nothing to download, the root must hold the data
    configfile.write_text(yaml.safe_dump(config))
    make_root(tmp_path / "data" / "brats2018-sample")
    result = snakemake(tmp_path, configfile=configfile, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "config dataset.root: " + message.replace("\\", "") in output.replace("\\", "")
    assert not (tmp_path / "results").exists()


@pytest.fixture
def sample_server(tmp_path):
    """The GitHub repository's raw files, served on 127.0.0.1 from the test copy of one case."""
    served = tmp_path / "served" / "koriavinash1" / "DeepBrainSeg" / "5d4f381" / "sample_volume" / "brats"
    served.mkdir(parents=True)
    shutil.copytree(BRATS18, served / BRATS18.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.slow
def test_the_brats_sample_downloads_checked_by_its_sha256(tmp_path, sample_server):
    """The config's URLs (one case's five, pointed at the local server) are fetched by the `download_raw`
    checkpoint into dataset.root before discovery; each file must match the sha256 the config lists."""
    configfile = project(tmp_path / "project", "brats-sample.yaml")
    config = yaml.safe_load(configfile.read_text())
    urls = [url for url in config["download"]["urls"] if f"/{BRATS18.name}/" in url]
    assert len(urls) == 5 and len(config["download"]["urls"]) == 100  # the twenty cases
    config["download"]["urls"] = [url.replace("https://raw.githubusercontent.com", sample_server) for url in urls]
    configfile.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "project"
    assert planned_jobs(workdir, configfile=configfile)["download_raw"] == 1
    snakemake(workdir, "results/brats2018-sample/manifest.tsv", configfile=configfile)
    downloaded = workdir / "data" / "brats2018-sample" / BRATS18.name
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(p.name for p in BRATS18.iterdir())
    assert all((downloaded / p.name).read_bytes() == p.read_bytes() for p in BRATS18.iterdir())
    manifest = pd.read_csv(workdir / "results" / "brats2018-sample" / "manifest.tsv", sep="\t")
    assert list(manifest.subject) == [BRATS18.name] * 5
    assert sorted(manifest.sha256) == sorted(url.split("#sha256=")[1] for url in urls)


def test_a_copied_project_reruns_nothing_and_logs_into_its_own_store(workdir, tmp_path):
    """Nothing absolute in rule parameters (the accelerate config folder comes through the environment), and the
    copy's SQLite store points its MLflow artefacts at the copy, not at the original folder."""
    from mlflow.tracking import MlflowClient

    from codebrain.tracking.runs import experiment_id

    original, _ = workdir
    copy, checkout = tmp_path / "moved-results", tmp_path / "moved-checkout"
    shutil.copytree(original, copy, symlinks=True)
    shutil.copytree(workflow_copy(), checkout, symlinks=True)
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "-s", str(checkout / "Snakefile"),
                             "-d", str(copy), "-n", "--configfile", str(TINY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing to be done" in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]

    uri = f"sqlite:///{copy / 'results' / 'mlflow.db'}"
    client = MlflowClient(uri)
    before = client.get_experiment_by_name("tiny").artifact_location
    assert before.startswith(original.resolve().as_uri())
    experiment = experiment_id(client, uri, "tiny")
    assert client.get_experiment(experiment).artifact_location == (copy / "results" / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([experiment], max_results=1000)
    assert runs and all(run.info.artifact_uri.startswith((copy / "results").resolve().as_uri()) for run in runs)
    original_store = MlflowClient(f"sqlite:///{original / 'results' / 'mlflow.db'}")
    assert original_store.get_experiment_by_name("tiny").artifact_location == before


@pytest.mark.parametrize("resources,visible,gpus", [(["--resources", "gpu=8"], "", 8), ([], "0,1,2,3", 4)])
def test_a_shipped_gpu_config_trains_on_every_gpu_the_invocation_allows(tmp_path, resources, visible, gpus):
    """config/brats.yaml's `gpus: all` over a real-named folder: `--resources gpu=8` plans each training job on
    eight GPUs (one process each); without it, on the GPUs this (faked) machine shows."""
    configfile = project(tmp_path, "brats.yaml")
    brats2023_folder(tmp_path / "data" / "BraTS2023")
    result = subprocess.run(snakemake_command() + ["-d", str(tmp_path), "-n", "-p", *resources, "--configfile", str(configfile)],
                            capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = re.split(r"\n(?=(?:local)?rule )", result.stdout + result.stderr)
    training = [job for job in jobs if re.match(r"(local)?rule train_stage[12]:", job)]
    assert len(training) == 2
    for job in training:
        assert re.search(rf"resources: .*\bgpu={gpus}\b", job), job
        assert f"--num_processes {gpus}" in job
