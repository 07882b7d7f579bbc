"""`codebrain bids`, the BIDS App: a BIDS folder made from the tiny DAG's phantom (and one from a shipped real
case) in, derivatives out, their names checked against the BIDS schema's derivative rules (bidsschematools)."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidsschematools import schema
from helpers import run_cli

from codebrain.evaluation.bids import Visit, contrast_of, derivative_path

REALDATA = Path(__file__).parent / "data" / "realdata"
BIDS_SUFFIX = {"T1": "T1w", "T2": "T2w", "PD": "PDw"}


def schema_problems(root: Path) -> list[str]:
    """Every file under a derivative dataset against the schema's rule for non-parametric anatomical derivatives:
    entities allowed and in the schema's order, labels of the label format, suffix and extension allowed."""
    bids = schema.load_schema()
    rule = bids.rules.files.deriv.imaging.anat_nonparametric_volumetric
    short = {name: bids.objects.entities[name]["name"] for name in bids.rules.entities}
    order = [short[name] for name in bids.rules.entities]
    allowed = {short[name] for name in rule.entities}
    label = bids.objects.formats["label"]["pattern"]
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "dataset_description.json"):
        parts = path.relative_to(root).parts
        extension = next((e for e in rule.extensions if path.name.endswith(e)), None)
        *pairs, suffix = path.name[: -len(extension)].split("_") if extension else ["", ""]
        keys = [pair.split("-", 1)[0] for pair in pairs]
        if extension is None or suffix not in rule.suffixes:
            problems.append(f"{path.name}: suffix or extension not allowed")
        elif not set(keys) <= allowed or keys != sorted(keys, key=order.index):
            problems.append(f"{path.name}: entities {keys} not allowed or out of order")
        elif not all(re.fullmatch(label, pair.split("-", 1)[1]) for pair in pairs):
            problems.append(f"{path.name}: a label outside {label}")
        elif parts[0] != pairs[0] or parts[-2] != "anat" or (len(parts) == 4 and parts[1] != pairs[1]):
            problems.append(f"{path.name}: not in its sub-/ses-/anat folder")
    return problems


def test_the_schema_check_catches_bad_names(tmp_path):
    for name in ("sub-01/anat/sub-01_desc-imputed_FLAIR.nii.gz", "sub-01/anat/sub-01_desc-imputed_FLAIRx.nii.gz",
                 "sub-01/anat/sub-01_desc-imputed_ce-gadolinium_T1w.nii.gz", "sub-02/anat/sub-01_desc-x_T2w.nii.gz",
                 "sub-01/anat/sub-01_desc-imputed_x_T2w.nii.gz"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    assert len(schema_problems(tmp_path)) == 4 and "sub-01_desc-imputed_FLAIR.nii.gz" not in str(schema_problems(tmp_path))


@pytest.mark.parametrize("name,contrast", [("sub-1_T1w.nii.gz", "T1"), ("sub-1_ses-a_ce-gadolinium_T1w.nii.gz", "T1Gd"),
                                           ("sub-1_ce-Gd_run-2_T1w.nii", "T1Gd"), ("sub-1_PDw.nii.gz", "PD"),
                                           ("sub-1_FLAIR.nii.gz", "FLAIR"), ("sub-1_T2starw.nii.gz", None)])
def test_bids_names_map_to_contrasts(name, contrast):
    assert contrast_of(Path(name)) == contrast


def test_derivative_names_follow_the_schema(tmp_path):
    for visit in (Visit("01", None), Visit("02", "1")):
        for contrast in ("T1", "T1Gd", "T2", "PD", "FLAIR"):
            for desc in ("imputed", "uncertainty"):
                for extension in (".nii.gz", ".json"):
                    path = tmp_path / derivative_path(visit, contrast, desc, extension)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
    assert schema_problems(tmp_path) == []


@pytest.fixture(scope="module")
def phantom_bids(workdir, tmp_path_factory):
    """sub-01 lacks PD; sub-02 has everything; sub-03 has two sessions (T1 only; T2 and PD); sub-04's T1 is broken."""
    raw, root = workdir[0] / "results" / "tiny" / "raw", tmp_path_factory.mktemp("bids") / "rawdata"
    phantom = {i: {c: next((raw / f"IXI-{c}").glob(f"IXI00{i}-*.nii.gz")) for c in BIDS_SUFFIX} for i in (1, 2, 3, 4)}
    layout = {("01", None): ["T1", "T2"], ("02", None): ["T1", "T2", "PD"], ("03", "1"): ["T1"],
              ("03", "2"): ["T2", "PD"], ("04", None): ["T1", "T2"]}
    for (subject, session), contrasts in layout.items():
        folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
        folder.mkdir(parents=True)
        for contrast in contrasts:
            name = f"sub-{subject}_" + (f"ses-{session}_" if session else "") + f"{BIDS_SUFFIX[contrast]}.nii.gz"
            shutil.copy(phantom[int(subject)][contrast], folder / name)
    (root / "sub-04" / "anat" / "sub-04_T1w.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "phantom", "BIDSVersion": "1.10.0"}))
    return root


def test_bids_app_imputes_what_each_visit_lacks(workdir, phantom_bids, tmp_path):
    model = workdir[0] / "results" / "tiny" / "models" / "codebrain" / "stage2.pt"
    before = {p: p.stat().st_mtime_ns for p in phantom_bids.rglob("*")}
    result = run_cli("bids", phantom_bids, tmp_path / "out", "participant", "--model", model, "--register",
                 "--uncertainty", "2", check=False)
    assert result.returncode == 1, result.stderr[-2000:]  # sub-04 failed, the others ran
    assert "sub-04: failed:" in result.stderr and "sub-04_T1w.nii.gz" in result.stderr
    assert "nothing missing, skipped: sub-02" in result.stdout
    derivatives = tmp_path / "out" / "codebrain"
    written = sorted(str(p.relative_to(derivatives)) for p in derivatives.rglob("*.nii.gz"))
    assert written == ["sub-01/anat/sub-01_desc-imputed_PDw.nii.gz", "sub-01/anat/sub-01_desc-uncertainty_PDw.nii.gz",
                       "sub-03/ses-1/anat/sub-03_ses-1_desc-imputed_PDw.nii.gz",
                       "sub-03/ses-1/anat/sub-03_ses-1_desc-imputed_T2w.nii.gz",
                       "sub-03/ses-1/anat/sub-03_ses-1_desc-uncertainty_PDw.nii.gz",
                       "sub-03/ses-1/anat/sub-03_ses-1_desc-uncertainty_T2w.nii.gz",
                       "sub-03/ses-2/anat/sub-03_ses-2_desc-imputed_T1w.nii.gz",
                       "sub-03/ses-2/anat/sub-03_ses-2_desc-uncertainty_T1w.nii.gz"]
    assert schema_problems(derivatives) == []
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "codebrain"
    sidecar = json.loads((derivatives / "sub-01/anat/sub-01_desc-imputed_PDw.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz", "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"]
    assert len(sidecar["CodeBrainModel"]["SHA256"]) == 64 and sidecar["Units"].startswith("0-1")
    # the image `codebrain impute` gives for those inputs, on the first input's grid (up to ANTs' run-to-run
    # differences: registration is not bit-repeatable)
    run_cli("impute", "--model", model, "--input", f"T1={phantom_bids / 'sub-01/anat/sub-01_T1w.nii.gz'}",
        "--input", f"T2={phantom_bids / 'sub-01/anat/sub-01_T2w.nii.gz'}", "--target", "PD", "--register",
        "--out", tmp_path / "pd.nii.gz")
    bids_image = nib.load(derivatives / "sub-01/anat/sub-01_desc-imputed_PDw.nii.gz")
    impute_image = nib.load(tmp_path / "pd.nii.gz")
    np.testing.assert_allclose(bids_image.get_fdata(), impute_image.get_fdata(), atol=0.05)
    assert np.corrcoef(bids_image.get_fdata().ravel(), impute_image.get_fdata().ravel())[0, 1] > 0.999
    assert np.allclose(bids_image.affine, nib.load(phantom_bids / "sub-01/anat/sub-01_T1w.nii.gz").affine)
    assert {p: p.stat().st_mtime_ns for p in phantom_bids.rglob("*")} == before  # raw data untouched
    assert not [p for p in derivatives.rglob(".*")]  # no registration folder left


def test_bids_app_refuses_unknown_participants_and_targets(workdir, phantom_bids, tmp_path):
    model = workdir[0] / "results" / "tiny" / "models" / "codebrain" / "stage2.pt"
    result = run_cli("bids", phantom_bids, tmp_path, "participant", "--model", model, "--participant-label", "09",
                 check=False)
    assert result.returncode == 2 and "--participant-label 09: not in" in result.stderr
    result = run_cli("bids", phantom_bids, tmp_path, "participant", "--model", model, "--target", "FLAIR", check=False)
    assert result.returncode == 2 and "--target FLAIR: this model imputes T1, T2, PD" in result.stderr
    result = run_cli("bids", tmp_path, tmp_path / "o", "participant", "--model", model, check=False)
    assert result.returncode == 2 and "not a BIDS dataset" in result.stderr


def test_bids_app_on_a_real_case_renamed_to_bids(workdir, tmp_path):
    """The shipped BraTS 2018 case as BIDS (T1w, ce-gadolinium T1w, T2w) through the tiny T1/T2/PD model: its PD is
    imputed over the whole brain on the case's own 1 mm grid; the contrast-enhanced scan, unknown to the model,
    is not used."""
    case = REALDATA / "brats2018" / "Brats18_TCIA01_425_1"
    anat = tmp_path / "rawdata" / "sub-TCIA01425" / "anat"
    anat.mkdir(parents=True)
    for source, name in (("t1", "T1w"), ("t1ce", "ce-gadolinium_T1w"), ("t2", "T2w")):
        (anat / f"sub-TCIA01425_{name}.nii.gz").symlink_to(case / f"Brats18_TCIA01_425_1_{source}.nii.gz")
    (tmp_path / "rawdata" / "dataset_description.json").write_text('{"Name": "real", "BIDSVersion": "1.10.0"}')
    model = workdir[0] / "results" / "tiny" / "models" / "codebrain" / "stage2.pt"
    run_cli("bids", tmp_path / "rawdata", tmp_path / "out", "participant", "--model", model)
    derivatives = tmp_path / "out" / "codebrain"
    assert sorted(p.name for p in derivatives.rglob("*.nii.gz")) == ["sub-TCIA01425_desc-imputed_PDw.nii.gz"]
    image = nib.load(derivatives / "sub-TCIA01425" / "anat" / "sub-TCIA01425_desc-imputed_PDw.nii.gz")
    brain = np.asarray(nib.load(anat / "sub-TCIA01425_T1w.nii.gz").dataobj) > 0
    assert image.shape == (240, 240, 155) and (image.get_fdata()[brain] > 0).mean() > 0.9
    sidecar = json.loads((derivatives / "sub-TCIA01425/anat/sub-TCIA01425_desc-imputed_PDw.json").read_text())
    assert [s.rsplit("_", 1)[1] for s in sidecar["Sources"]] == ["T1w.nii.gz", "T2w.nii.gz"]
    assert sidecar["ResampledTo"] == [4, 4] and sidecar["InputVoxelSize"] == [1, 1, 1]
    assert schema_problems(derivatives) == []
