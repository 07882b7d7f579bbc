"""Shared fixtures: tiny phantom cohorts (made once per session) and the real test scans."""

from pathlib import Path

import pytest

from helpers import planned_jobs, snakemake

from codebrain.data.phantom import PhantomConfig, make_subject

REALDATA = Path(__file__).parent / "data" / "realdata"


@pytest.fixture(scope="session")
def ixi_phantom(tmp_path_factory):
    """Three IXI-like subjects at 3 mm: {index: files}."""
    root = tmp_path_factory.mktemp("phantom-ixi")
    cfg = PhantomConfig(flavour="ixi", n_subjects=3, downsample=3.0, seed=7)
    return root, {i: make_subject(i, cfg, root) for i in (1, 2, 3)}


@pytest.fixture(scope="session")
def brats_phantom(tmp_path_factory):
    """Two BraTS-like subjects at 2 mm: {index: files}."""
    root = tmp_path_factory.mktemp("phantom-brats")
    cfg = PhantomConfig(flavour="brats", n_subjects=2, downsample=2.0, seed=3)
    return root, {i: make_subject(i, cfg, root) for i in (1, 2)}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """The whole DAG on tests/config/tiny.yaml, run once: (its folder, the jobs it planned)."""
    workdir = tmp_path_factory.mktemp("tiny-dag")
    planned = planned_jobs(workdir)
    snakemake(workdir)
    return workdir, planned
