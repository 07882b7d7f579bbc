import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from codebrain.data.nifti import load_volume
from codebrain.data.phantom import rigid_matrix, true_fixed_to_moving
from codebrain.data.registration import fixed_to_moving_ras, register_subject
from conftest import REALDATA


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def brain_points(reference_path):
    """World coordinates (4 x P, homogeneous) of the reference's bright voxels."""
    reference, image = load_volume(reference_path)
    brain = np.argwhere(reference > np.percentile(reference, 70))
    return image.affine @ np.c_[brain, np.ones(len(brain))].T


def displacement_mm(first, second, points):
    """Per-point distance between two 4x4 world maps applied to `points`."""
    return np.linalg.norm((first @ points - second @ points)[:3], axis=0)


def pose(files, contrast):
    return np.array(json.loads(files[f"{contrast}.pose"].read_text())["anatomy_from_world"])


@pytest.fixture(scope="module")
def registered_phantom(ixi_phantom, tmp_path_factory):
    _, subjects = ixi_phantom
    files = subjects[2]
    volumes = {c: files[c] for c in ("T1", "T2", "PD")}
    before = {c: sha(p) for c, p in volumes.items()}
    out = tmp_path_factory.mktemp("registered")
    qc = register_subject(volumes, "T2", out)
    return files, out, qc, before


@pytest.mark.parametrize("moving", ["T1", "PD"])
def test_recovers_known_misalignment(registered_phantom, moving):
    files, out, _, _ = registered_phantom
    points = brain_points(files["T2"])
    true = true_fixed_to_moving(pose(files, "T2"), pose(files, moving))
    estimated = fixed_to_moving_ras(out / f"{moving}_to_T2.mat")
    error_mm = displacement_mm(estimated, true, points)
    misalignment_mm = displacement_mm(true, np.eye(4), points)
    rotation = estimated[:3, :3] @ true[:3, :3].T
    error_deg = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    print(f"{moving}: misalignment {misalignment_mm.mean():.2f} mm -> error {error_mm.mean():.2f} mm "
          f"(max {error_mm.max():.2f}), {error_deg:.2f} deg")
    assert misalignment_mm.mean() > 2.0  # the phantom gave registration real work
    assert error_mm.mean() < 1.0 and error_mm.max() < 2.0  # well under one 3 mm voxel
    assert error_deg < 1.0


def test_outputs_on_reference_grid_and_raw_untouched(registered_phantom):
    files, out, qc, before = registered_phantom
    _, reference = load_volume(files["T2"])
    for contrast in ("T1", "T2", "PD"):
        _, image = load_volume(out / f"{contrast}.nii.gz")
        assert image.shape == reference.shape
        assert np.allclose(image.affine, reference.affine, atol=1e-3)
        assert sha(files[contrast]) == before[contrast]
    for contrast in ("T1", "PD"):
        assert qc["contrasts"][contrast]["mi_after"] > qc["contrasts"][contrast]["mi_before"]


def test_the_same_subject_registers_alike_every_time(registered_phantom, tmp_path):
    """A rerun (a resumed DAG, another machine) gives byte-equal volumes at the same seed: ANTs' metric sampling is
    seeded (antsRegistration reads seed 0 as "draw one", and ANTsPy ignores registration(random_seed=))."""
    files, out, _, _ = registered_phantom
    register_subject({c: files[c] for c in ("T2", "PD")}, "T2", tmp_path / "again")
    assert sha(tmp_path / "again" / "PD.nii.gz") == sha(out / "PD.nii.gz")
    register_subject({c: files[c] for c in ("T2", "PD")}, "T2", tmp_path / "other", seed=7)
    assert sha(tmp_path / "other" / "PD.nii.gz") != sha(out / "PD.nii.gz")  # the seed is what fixes it


@pytest.mark.slow  # three ANTs registrations of 1 mm volumes
def test_real_native_study_gains_similarity(tmp_path):
    """A glioma study in scanner space (5.5 mm slices): every contrast must align better to T1."""
    folder = REALDATA / "native-unregistered" / "TCGA-FG-6692"
    volumes = {p.name.split(".")[0]: p for p in sorted(folder.glob("*.nii.gz"))}
    qc = register_subject(volumes, "t1", tmp_path)
    for contrast in ("t1c", "t2", "flair"):
        record = qc["contrasts"][contrast]
        assert record["mi_after"] > record["mi_before"] + 0.1, (contrast, record)


@pytest.mark.slow  # two ANTs registrations of a real 1 mm volume
@pytest.mark.parametrize("moving", ["T1", "PD"])
def test_real_ixi_recovers_known_pose(moving, tmp_path):
    """IXI002's thick-slice T1 and PD already sit close to T2 in world space; move the moving
    image's header by a known rigid pose and check registration takes it back."""
    folder = REALDATA / "ixi-thick" / "IXI002-Guys-0828"
    original = folder / f"ds_IXI002-Guys-0828-{moving}.nii.gz"
    image = nib.load(original)
    known = rigid_matrix(np.array([4.0, -3.0, 5.0]), np.array([6.0, -4.0, 5.0]))
    moved = tmp_path / f"moved-{moving}.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), known @ image.affine), moved)
    volumes = {"T2": folder / "ds_IXI002-Guys-0828-T2.nii.gz", moving: moved}
    qc = register_subject(volumes, "T2", tmp_path / "out")

    points = brain_points(volumes["T2"])
    estimated = fixed_to_moving_ras(tmp_path / "out" / f"{moving}_to_T2.mat")
    error_mm = displacement_mm(estimated, known, points).mean()
    moved_mm = displacement_mm(known, np.eye(4), points).mean()
    print(f"IXI002 {moving}: moved {moved_mm:.1f} mm, recovered to {error_mm:.2f} mm; {qc['contrasts'][moving]}")
    assert error_mm < 1.0  # a 6 mm slice thickness: one voxel's sixth
    assert qc["contrasts"][moving]["mi_after"] > qc["contrasts"][moving]["mi_before"] + 0.05
