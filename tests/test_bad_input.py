"""Each bad input gives an InputError naming the file and the problem; nothing half-written stays."""

import gzip
import hashlib
import shutil

import nibabel as nib
import numpy as np
import pytest

from codebrain.cli import main
from codebrain.data.layouts import discover
from codebrain.io import InputError
from codebrain.data.nifti import load_volume
from codebrain.data.slices import SliceConfig, extract_subject
from conftest import REALDATA

IXI = REALDATA / "ixi-thick" / "IXI002-Guys-0828"


def save(data, path, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(InputError, match="corrupt.nii.gz: not a readable NIfTI"):
        load_volume(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "truncated.nii.gz"
    data = (IXI / "ds_IXI002-Guys-0828-T2.nii.gz").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.nii.gz: not a readable NIfTI"):
        load_volume(path)


def test_4d_volume(tmp_path):
    path = save(np.zeros((4, 4, 4, 3), np.float32), tmp_path / "fmri.nii.gz")
    with pytest.raises(InputError, match=r"fmri.nii.gz: expected a 3D volume, found shape \(4, 4, 4, 3\)"):
        load_volume(path)


def test_nan_voxels(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    path = save(data, tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="nan.nii.gz: 1 voxels are NaN"):
        load_volume(path)


def test_grid_disagreement_without_registration(tmp_path):
    files = {"T2": IXI / "ds_IXI002-Guys-0828-T2.nii.gz", "PD": IXI / "ds_IXI002-Guys-0828-PD.nii.gz"}
    with pytest.raises(InputError, match="PD.nii.gz: voxel grid .* differs from its reference"):
        extract_subject("IXI002", files, ["T2", "PD"], SliceConfig(n_slices=4, size=64), tmp_path / "out.npz")
    assert not list(tmp_path.iterdir())


def test_more_slices_than_the_volume(tmp_path):
    files = {"T2": IXI / "ds_IXI002-Guys-0828-T2.nii.gz"}  # 28 axial slices of 6 mm
    with pytest.raises(InputError, match="T2.nii.gz: 90 slices asked for, the volume has 28 axial slices"):
        extract_subject("IXI002", files, ["T2"], SliceConfig(n_slices=90, size=64), tmp_path / "out.npz")
    with pytest.raises(InputError, match="slices 20..109 asked for, the volume has 28"):
        extract_subject("IXI002", files, ["T2"], SliceConfig(size=64), tmp_path / "out.npz", z_range=(20, 109))
    assert not list(tmp_path.iterdir())


def test_empty_brain_mask(tmp_path):
    path = save(np.zeros((16, 16, 8), np.int16), tmp_path / "blank.nii.gz")
    with pytest.raises(InputError, match="blank.nii.gz: empty brain mask"):
        extract_subject("s", {"T1": path}, ["T1"], SliceConfig(n_slices=2, size=16), tmp_path / "out.npz")


def test_absent_or_empty_root_names_folder_and_download_page(tmp_path):
    with pytest.raises(InputError, match=r"nowhere does not exist; get the data from https://brain-development"):
        discover(tmp_path / "nowhere", "ixi", ["T1", "T2"])
    (tmp_path / "IXI-T1.tar").write_bytes(b"")
    with pytest.raises(InputError, match=r"holds no ixi NIfTI files. Found archives \['IXI-T1.tar'\]"):
        discover(tmp_path, "ixi", ["T1", "T2"])


def test_missing_contrast_dropped_or_fatal(capsys):
    root = REALDATA / "brats2023"
    found = discover(root, "brats", ["T1", "T2", "FLAIR", "T1Gd"])
    assert list(found) == ["BraTS-GLI-00000-000"]
    with pytest.raises(InputError, match="no subject has all of"):
        discover(REALDATA / "ixi-thick", "ixi", ["T1", "T2", "PD"], with_labels=True)
    capsys.readouterr()
    discover(REALDATA / "ixi-thick", "ixi", ["T1", "T2", "PD"])  # complete: nothing reported
    assert "dropping" not in capsys.readouterr().err


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    blank = save(np.zeros((8, 8, 8), np.float32), tmp_path / "blank.nii.gz")
    raw_sha = hashlib.sha256(blank.read_bytes()).hexdigest()
    code = main(["extract-slices", "--subject", "s", "--input", f"T1={blank}", "--contrasts", "T1",
                 "--config", '{"n_slices": 2, "size": 8}', "--out", str(tmp_path / "s.npz")])
    assert code == 2
    assert f"codebrain extract-slices: error: {blank}: empty brain mask" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()
    assert hashlib.sha256(blank.read_bytes()).hexdigest() == raw_sha


def test_register_refuses_bad_volume_before_ants(tmp_path):
    good = shutil.copy(IXI / "ds_IXI002-Guys-0828-T2.nii.gz", tmp_path / "t2.nii.gz")
    bad = save(np.zeros((4, 4, 4, 2), np.float32), tmp_path / "t1.nii.gz")
    code = main(["register", "--input", f"T2={good}", "--input", f"T1={bad}", "--reference", "T2",
                 "--out-dir", str(tmp_path / "out")])
    assert code == 2
    assert not (tmp_path / "out").exists()
