"""The readers on real naming: BraTS 2023, IXI (with a prefix), and a BIDS tree."""

import shutil

import pytest

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


BRATS18 = REALDATA / "brats2018" / "Brats18_TCIA01_425_1"


def test_brats_2018_and_2021_namings_are_read_by_the_brats_layout(tmp_path):
    """The namings most BraTS copies use: Brats18_<site>_<id>_1/..._t1ce.nii.gz and BraTS2021_00000_t1ce.nii.gz."""
    root = tmp_path / "brats"
    shutil.copytree(BRATS18, root / BRATS18.name)
    (root / "BraTS2021_00007").mkdir()
    for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
        (root / "BraTS2021_00007" / f"BraTS2021_00007_{suffix}.nii.gz").symlink_to(
            BRATS18 / f"{BRATS18.name}_{suffix}.nii.gz")
    found = discover(root, "brats", ["T1", "T2", "FLAIR", "T1Gd"], with_labels=True)
    assert sorted(found) == ["BraTS2021_00007", "Brats18_TCIA01_425_1"]
    assert found["Brats18_TCIA01_425_1"]["T1Gd"].name == "Brats18_TCIA01_425_1_t1ce.nii.gz"
    assert found["BraTS2021_00007"]["T1"].name == "BraTS2021_00007_t1.nii.gz"
    assert found["BraTS2021_00007"]["seg"].name == "BraTS2021_00007_seg.nii.gz"


def test_a_symlinked_dataset_folder_is_followed(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / BRATS18.name).symlink_to(BRATS18)
    assert list(discover(tmp_path / "data", "brats", ["T1", "T2"])) == [BRATS18.name]


def test_2018_labels_become_the_2023_convention(tmp_path):
    import nibabel as nib
    import numpy as np

    from codebrain.data.layouts import brats_labels
    from codebrain.io import InputError

    path = BRATS18 / f"{BRATS18.name}_seg.nii.gz"
    labels = np.asarray(nib.load(path).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    mapped = brats_labels(labels, path)
    assert set(np.unique(mapped)) == {0, 1, 2, 3}
    assert np.array_equal(mapped == 3, labels == 4) and np.array_equal(mapped[labels != 4], labels[labels != 4])
    with pytest.raises(InputError, match="both label 3"):
        brats_labels(np.array([0, 3, 4]), path)
    with pytest.raises(InputError, match="not BraTS labels"):
        brats_labels(np.array([0, 5]), path)


def test_the_layout_list_lives_in_one_place():
    """The readers, each layout's contrasts and download page, the CLI's choices and the config check agree."""
    from snakemake.exceptions import WorkflowError

    from codebrain.cli import parser
    from codebrain.data.layouts import DOWNLOAD_PAGES, LAYOUT_CONTRASTS, MATCHERS
    from codebrain.workflow import validate_config

    assert set(MATCHERS) == set(LAYOUT_CONTRASTS) == set(DOWNLOAD_PAGES)
    check_raw = parser()._subparsers._group_actions[0].choices["check-raw"]
    layout_option = next(a for a in check_raw._actions if a.dest == "layout")
    assert list(layout_option.choices) == sorted(MATCHERS)
    for layout, contrasts in LAYOUT_CONTRASTS.items():
        validate_config({"dataset": {"name": "d", "root": "r", "layout": layout, "contrasts": contrasts,
                                     "reference": contrasts[0]}})
    with pytest.raises(WorkflowError, match="dataset.layout: 'nifti' is not one of ixi, brats, bids, msd"):
        validate_config({"dataset": {"name": "d", "root": "r", "layout": "nifti", "contrasts": ["T1", "T2"],
                                     "reference": "T1"}})
    with pytest.raises(WorkflowError, match="dataset.contrasts: ixi data have no FLAIR"):
        validate_config({"dataset": {"name": "d", "root": "r", "layout": "ixi", "contrasts": ["T1", "FLAIR"],
                                     "reference": "T1"}})
