"""Imputed volumes from the tiny DAG (on the reference grid, restacking round trip) and `codebrain impute` on a
user's own scans: outputs, refusals, never overwriting an input."""

import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import run_cli


def codebrain_cli(*args, env=None):
    """The CLI in this process; given env, in a process of its own (TMPDIR is read once per process)."""
    if env is None:
        return run_cli(*args, check=False)
    return subprocess.run([sys.executable, "-m", "codebrain.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_imputed_volumes_sit_on_the_reference_grid(workdir):
    import pandas as pd

    path, _ = workdir
    out = path / "results" / "tiny"
    imputed = pd.read_csv(out / "imputed" / "codebrain" / "imputed.tsv", sep="\t", dtype={"scenario": str})
    test_subjects = pd.read_csv(out / "slices" / "test.tsv", sep="\t").subject.unique()
    assert len(imputed) == 9 * len(test_subjects)  # 6 scenarios, 9 (scenario, target) pairs per subject
    for row in imputed.itertuples():
        volume, reference = nib.load(path / row.path), nib.load(out / "registered" / row.subject / "T2.nii.gz")
        assert volume.shape == reference.shape and np.allclose(volume.affine, reference.affine)
        assert row.scenario[["T1", "T2", "PD"].index(row.target)] == "0"
    metrics = pd.read_csv(out / "metrics" / "codebrain" / "summary.csv")
    assert set(metrics.group) == {"O->O", "M->O", "ALL"}


def test_imputed_volumes_carry_brasyns_scores_on_their_own_grid(workdir):
    """imputed.tsv's 3D scores, recomputed from the NIfTI files: the imputation's bounding box, their percentile
    clipping by numpy, PSNR in the brain against the registered volume. The tiny cohort's volumes are 4 slices
    thick, thinner than SSIM's window (test_brasyn.py checks the SSIM on a grid), and have no tumour labels."""
    import pandas as pd

    from codebrain.data.slices import brain_mask

    def clipped(volume):
        low, high = np.percentile(volume, [0.5, 99.5])
        low = max(low, 0)
        return (np.clip(volume, low, high) - low) / (high - low)

    path, _ = workdir
    out = path / "results" / "tiny"
    imputed = pd.read_csv(out / "imputed" / "codebrain" / "imputed.tsv", sep="\t", dtype={"scenario": str})
    assert imputed.ssim_tumour_3d.isna().all() and imputed.ssim_outside_3d.isna().all()
    for row in [imputed[imputed.n_inputs == 1].iloc[0], imputed[imputed.n_inputs == 2].iloc[-1]]:
        prediction = nib.load(path / row.path).get_fdata(dtype=np.float32)
        real = {c: nib.load(out / "registered" / row.subject / f"{c}.nii.gz").get_fdata(dtype=np.float32)
                for c in ("T1", "T2", "PD")}
        box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(prediction))
        assert min(prediction[box].shape) == 4 < prediction.shape[2]  # scored on the imputed planes only
        pred, truth = clipped(prediction[box]), clipped(real[row.target][box])
        brain = brain_mask(list(real.values()))[box]
        assert row.psnr_brain_3d == pytest.approx(10 * np.log10(1 / ((pred - truth)[brain] ** 2).mean()), abs=1e-3)
    means = pd.read_csv(out / "imputed" / "codebrain" / "brasyn.tsv", sep="\t").set_index("group")
    per_pair = imputed.groupby(["scenario", "target"]).psnr_brain_3d.mean()
    assert means.loc["ALL", "psnr_brain_3d"] == pytest.approx(per_pair.mean(), abs=1e-3)


def test_imputed_test_subjects_carry_their_std_volumes(workdir):
    """evaluation.uncertainty_samples (default 8): a _std volume beside every imputation, holding the std of the
    sampled decodings (recomputed here from the store's slices and the same seed) in the reference's scale."""
    import pandas as pd
    import torch

    from codebrain.rebuild import load_codebrain
    from codebrain.evaluation.uncertainty import sample_imputations

    path, _ = workdir
    out = path / "results" / "tiny"
    imputed = pd.read_csv(out / "imputed" / "codebrain" / "imputed.tsv", sep="\t", dtype={"scenario": str})
    assert all((path / p).exists() for p in imputed.std_path)
    row = imputed[imputed.n_inputs == 1].iloc[0]
    rows = pd.read_csv(out / "slices" / "test.tsv", sep="\t")
    mine = rows[rows.subject == row.subject]
    image = torch.from_numpy(np.load(out / "slices" / "test.npy")[mine["index"].to_numpy()].astype(np.float32))
    stage1, prior, _ = load_codebrain(out / "models" / "codebrain" / "stage2.pt")
    available = np.array([bit == "1" for bit in row.scenario])
    t = ["T1", "T2", "PD"].index(row.target)
    expected = sample_imputations(stage1, prior, image, available, 8)["std"][:, t].numpy()
    low, high = pd.read_csv(out / "slices" / "normalisation.tsv", sep="\t").set_index(["subject", "contrast"]).loc[
        (row.subject, row.target), ["low", "high"]]
    found = nib.load(path / row.std_path).get_fdata(dtype=np.float32)
    assert found.min() >= 0 and found.max() > 0
    np.testing.assert_allclose(np.sort(found[found > 0]), np.sort(expected[expected > 0] * (high - low)), rtol=1e-4)


def test_restacked_store_slices_give_back_the_registered_volume(workdir):
    """Slices -> volume is the inverse of volume -> slices: the test subject's own T1 slices, restacked,
    equal the registered T1 inside the sliced window (up to float16 rounding)."""
    import pandas as pd

    from codebrain.evaluation.volumes import restack

    path, _ = workdir
    store = path / "results" / "tiny" / "slices"
    rows = pd.read_csv(store / "test.tsv", sep="\t")
    subject = rows.subject.iloc[0]
    mine = rows[rows.subject == subject]
    geometry = pd.read_csv(store / "geometry.tsv", sep="\t").set_index("subject").loc[subject]
    low, high = pd.read_csv(store / "normalisation.tsv", sep="\t").set_index(["subject", "contrast"]).loc[
        (subject, "T1"), ["low", "high"]]
    slices = np.load(store / "test.npy")[mine["index"].to_numpy(), 0]  # T1
    reference = nib.load(path / "results" / "tiny" / "registered" / subject / "T1.nii.gz")
    volume = restack([(slices, (geometry.x0, geometry.y0))], mine.z.to_numpy(), low, high, reference)
    back, original = volume.get_fdata(), reference.get_fdata()
    inside = back != 0
    assert inside.sum() > 0.5 * len(mine) * 40 * 40 * 0.3  # a real part of the window holds brain/head
    assert np.abs(back[inside] - original[inside]).max() <= 1e-3 * (high - low) + 1e-6
    assert np.allclose(volume.affine, reference.affine)


def test_impute_a_users_own_scans(workdir, tmp_path):
    path, _ = workdir
    out = path / "results" / "tiny"
    model = out / "models" / "codebrain" / "stage2.pt"
    raw = {c: out / "raw" / f"IXI-{c}" / f"IXI001-Phantom-0001-{c}.nii.gz" for c in ("T1", "T2", "PD")}

    result = codebrain_cli("impute", "--model", model, "--input", f"T2={raw['T2']}", "--input", f"PD={raw['PD']}",
                           "--target", "T1", "--out", tmp_path / "t1.nii.gz")
    assert result.returncode == 0, result.stderr
    assert "outside the 4 middle slices the model was trained on" in result.stdout
    imputed, reference = nib.load(tmp_path / "t1.nii.gz"), nib.load(raw["T2"])
    assert imputed.shape == reference.shape and np.allclose(imputed.affine, reference.affine)
    data = imputed.get_fdata()
    assert 0 <= data.min() and data.max() <= 1 and data.max() > 0.2

    result = codebrain_cli("impute", "--model", model, "--input", f"T2={raw['T2']}", "--input", f"PD={raw['PD']}",
                           "--target", "T1", "--out", tmp_path / "skip.nii.gz", "--outside", "skip")
    assert "only slices" in result.stdout
    assert (nib.load(tmp_path / "skip.nii.gz").get_fdata() > 0).any(axis=(0, 1)).sum() < (data > 0).any(axis=(0, 1)).sum()

    stale = tmp_path / ".pd.nii.gz.register"  # what a killed --register run leaves: swept by the next one
    stale.mkdir()
    (tmp_path / "tmp").mkdir()
    result = codebrain_cli("impute", "--model", model, "--input", f"T1={raw['T1']}", "--input", f"T2={raw['T2']}",
                           "--target", "PD", "--out", tmp_path / "pd.nii.gz", "--register",
                           env={"TMPDIR": str(tmp_path / "tmp")})
    assert result.returncode == 0, result.stderr
    assert nib.load(tmp_path / "pd.nii.gz").shape == nib.load(raw["T1"]).shape
    assert not stale.exists() and not list((tmp_path / "tmp").glob("codebrain-register-*"))


@pytest.mark.parametrize("inputs,target,message", [
    (["T2", "PD"], "FLAIR", r"unknown contrast\(s\) \['FLAIR'\]: this model knows \['T1', 'T2', 'PD'\]"),
    (["T2", "PD"], "PD", r"--target PD is also an input"),
    (["T1", "T2"], "PD", r"voxel grid .* differs .* pass --register"),
])
def test_impute_refuses_bad_requests(workdir, tmp_path, inputs, target, message):
    path, _ = workdir
    out = path / "results" / "tiny"
    pairs = [x for c in inputs for x in ("--input", f"{c}={out / 'raw' / f'IXI-{c}' / f'IXI001-Phantom-0001-{c}.nii.gz'}")]
    result = codebrain_cli("impute", "--model", out / "models" / "codebrain" / "stage2.pt", *pairs, "--target", target,
                           "--out", tmp_path / "x.nii.gz")
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "x.nii.gz").exists()


def test_impute_never_overwrites_an_input_or_guesses(workdir, tmp_path):
    """--out may not be an input nor, without --overwrite, an existing file; a contrast given twice and a
    constant (all-zero) volume are refused, each naming the file."""
    path, _ = workdir
    out = path / "results" / "tiny"
    model = out / "models" / "codebrain" / "stage2.pt"
    raw = {c: out / "raw" / f"IXI-{c}" / f"IXI001-Phantom-0001-{c}.nii.gz" for c in ("T1", "T2", "PD")}
    t2_before = raw["T2"].read_bytes()

    def impute(*inputs, out_file, extra=()):
        pairs = [x for pair in inputs for x in ("--input", pair)]
        return codebrain_cli("impute", "--model", model, *pairs, "--target", "T1", "--out", out_file, *extra)

    result = impute(f"T2={raw['T2']}", f"PD={raw['PD']}", out_file=raw["T2"])
    assert result.returncode == 2 and "is the T2 input" in result.stderr
    assert raw["T2"].read_bytes() == t2_before

    existing = tmp_path / "t1.nii.gz"
    existing.write_bytes(b"a file of the user's")
    result = impute(f"T2={raw['T2']}", f"PD={raw['PD']}", out_file=existing)
    assert result.returncode == 2 and "exists; pass --overwrite" in result.stderr
    assert existing.read_bytes() == b"a file of the user's"
    result = impute(f"T2={raw['T2']}", f"PD={raw['PD']}", out_file=existing, extra=["--overwrite"])
    assert result.returncode == 0, result.stderr
    assert nib.load(existing).shape == nib.load(raw["T2"]).shape

    result = impute(f"T2={tmp_path / 'unreadable.nii.gz'}", f"T2={raw['T2']}", f"PD={raw['PD']}",
                    out_file=tmp_path / "twice.nii.gz")
    assert result.returncode == 2 and "T2 given twice" in result.stderr

    pd_image = nib.load(raw["PD"])
    zero = tmp_path / "zero-PD.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(pd_image.shape, np.float32), pd_image.affine), zero)
    result = impute(f"T2={raw['T2']}", f"PD={zero}", out_file=tmp_path / "zero.nii.gz")
    assert result.returncode == 2 and "zero-PD.nii.gz: constant intensity" in result.stderr
    assert not (tmp_path / "zero.nii.gz").exists() and not (tmp_path / "twice.nii.gz").exists()


def test_impute_names_a_missing_model(tmp_path):
    result = codebrain_cli("impute", "--model", tmp_path / "none.pt", "--input", "T1=a.nii.gz", "--target", "T2",
                           "--out", tmp_path / "x.nii.gz")
    assert result.returncode == 2 and "none.pt: no such checkpoint" in result.stderr


def fill_missing_with_one(imputer, image, available):
    """Stands in for the network: every missing contrast is 1 over the whole window, so what the output covers is
    the resampling and windowing alone."""
    import torch

    return torch.where(torch.as_tensor(available)[None, :, None, None], image, torch.ones_like(image))


@pytest.mark.parametrize("size,window", [(64, "pad"), (16, "tiles")])
def test_a_real_1mm_case_with_a_4mm_model_is_imputed_over_the_whole_brain(workdir, tmp_path, monkeypatch, size,
                                                                          window):
    """The tiny model was trained at 4 mm on 40 x 40 windows; a real 1 mm BraTS case is resampled to 4 mm, imputed
    (in tiles where the window is narrower than the brain) and resampled back onto its own grid: the output covers
    the brain, not a 40-voxel square of it."""
    import codebrain.evaluation.impute as imputation
    from conftest import REALDATA

    path, _ = workdir
    imputer, data = imputation.load_imputation_model(path / "results" / "tiny" / "models" / "codebrain" / "stage2.pt")
    assert data["voxel_size"] == [4, 4, 4] and data["size"] == 40
    monkeypatch.setattr(imputation, "impute", fill_missing_with_one)
    case = REALDATA / "brats2023" / "BraTS-GLI-00000-000"
    inputs = {"T1": case / "BraTS-GLI-00000-000-t1n.nii.gz", "T2": case / "BraTS-GLI-00000-000-t2w.nii.gz"}
    report = imputation.impute_scans(imputer, {**data, "size": size}, inputs, "PD", tmp_path / "pd.nii.gz")
    assert report["resampled_to"] == [4, 4] and report["window"] == window and (report["windows"] > 1) == (size == 16)
    imputed, t1 = nib.load(tmp_path / "pd.nii.gz"), nib.load(inputs["T1"])
    assert imputed.shape == t1.shape and np.allclose(imputed.affine, t1.affine)
    brain = np.asarray(t1.dataobj) > 0
    assert (imputed.get_fdata()[brain] > 0).mean() > 0.98


def test_impute_with_uncertainty_writes_the_std_beside_the_image(workdir, tmp_path):
    path, _ = workdir
    out = path / "results" / "tiny"
    raw = {c: out / "raw" / f"IXI-{c}" / f"IXI001-Phantom-0001-{c}.nii.gz" for c in ("T1", "T2", "PD")}
    args = ["impute", "--model", out / "models" / "codebrain" / "stage2.pt", "--input", f"T2={raw['T2']}",
            "--input", f"PD={raw['PD']}", "--target", "T1", "--out", tmp_path / "t1.nii.gz", "--uncertainty", "4"]
    result = codebrain_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "t1_std.nii.gz: per-voxel std of 4 images" in result.stdout
    image, std = nib.load(tmp_path / "t1.nii.gz"), nib.load(tmp_path / "t1_std.nii.gz")
    assert std.shape == image.shape and np.allclose(std.affine, image.affine)
    spread = std.get_fdata()
    assert spread.min() >= 0 and spread.max() > 0 and (spread[image.get_fdata() == 0] == 0).mean() > 0.5
    (tmp_path / "t1.nii.gz").unlink()
    result = codebrain_cli(*args)  # the std file is never replaced without --overwrite either
    assert result.returncode == 2 and "t1_std.nii.gz: exists; pass --overwrite" in result.stderr
