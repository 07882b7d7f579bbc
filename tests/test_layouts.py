"""The readers on real naming: BraTS 2023, IXI (with a prefix), and a BIDS tree."""

import shutil

from codebrain.data.layouts import discover
from conftest import REALDATA


def test_brats_2023_naming_maps_to_canonical_contrasts():
    found = discover(REALDATA / "brats2023", "brats", ["T1", "T2", "FLAIR", "T1Gd"], with_labels=True)
    files = found["BraTS-GLI-00000-000"]
    assert files["T1"].name.endswith("-t1n.nii.gz") and files["T1Gd"].name.endswith("-t1c.nii.gz")
    assert files["FLAIR"].name.endswith("-t2f.nii.gz") and files["seg"].name.endswith("-seg.nii.gz")


def test_ixi_naming_with_prefix():
    found = discover(REALDATA / "ixi-thick", "ixi", ["T1", "T2", "PD"])
    assert list(found) == ["IXI002-Guys-0828"]
    assert found["IXI002-Guys-0828"]["PD"].name == "ds_IXI002-Guys-0828-PD.nii.gz"


def test_bids_tree_with_sessions_and_gadolinium(tmp_path):
    source = REALDATA / "native-unregistered" / "TCGA-FG-6692"
    anat = tmp_path / "sub-6692" / "ses-pre" / "anat"
    anat.mkdir(parents=True)
    for name, bids in [("t1", "T1w"), ("t2", "T2w"), ("flair", "FLAIR")]:
        shutil.copy(source / f"{name}.nii.gz", anat / f"sub-6692_ses-pre_{bids}.nii.gz")
    shutil.copy(source / "t1c.nii.gz", anat / "sub-6692_ses-pre_ce-gadolinium_T1w.nii.gz")
    (anat / "sub-6692_ses-pre_T1w.json").write_text("{}")
    other = tmp_path / "sub-0002" / "anat"
    other.mkdir(parents=True)
    shutil.copy(source / "t1.nii.gz", other / "sub-0002_T1w.nii.gz")

    found = discover(tmp_path, "bids", ["T1", "T2", "FLAIR", "T1Gd"])
    assert list(found) == ["sub-6692_ses-pre"]  # sub-0002 lacks contrasts: dropped
    assert found["sub-6692_ses-pre"]["T1Gd"].name == "sub-6692_ses-pre_ce-gadolinium_T1w.nii.gz"
    assert found["sub-6692_ses-pre"]["T1"].name == "sub-6692_ses-pre_T1w.nii.gz"


def test_every_real_case_the_readme_lists_is_there():
    """tests/data/realdata/README.md's table names only folders that exist."""
    rows = [line.split("|")[1].strip() for line in (REALDATA / "README.md").read_text().splitlines()
            if line.startswith("| ") and "/" in line.split("|")[1]]
    assert rows and all((REALDATA / row).is_dir() for row in rows), rows
