import json

import numpy as np
import pytest

from codebrain.data.layouts import discover
from codebrain.data.nifti import load_volume
from codebrain.data.phantom import LABELS, PhantomConfig, contrast_image, make_subject, template_tissues


@pytest.fixture(scope="module")
def tissues():
    maps, _ = template_tissues(3.0)
    pure = {name: maps[name] > 0.9 for name in ("gm", "wm", "csf")}
    return maps, pure


def mean_signal(maps, pure, contrast, tissue):
    image = contrast_image(maps, contrast, np.random.default_rng(0))
    return image[pure[tissue]].mean()


def test_csf_dark_on_t1_bright_on_t2(tissues):
    maps, pure = tissues
    assert mean_signal(maps, pure, "T1", "csf") < 0.5 * mean_signal(maps, pure, "T1", "wm")
    assert mean_signal(maps, pure, "T1", "wm") > mean_signal(maps, pure, "T1", "gm")
    assert mean_signal(maps, pure, "T2", "csf") > 1.5 * mean_signal(maps, pure, "T2", "gm")
    assert mean_signal(maps, pure, "T2", "gm") > mean_signal(maps, pure, "T2", "wm")


def test_flair_suppresses_csf(tissues):
    maps, pure = tissues
    assert mean_signal(maps, pure, "FLAIR", "csf") < 0.3 * mean_signal(maps, pure, "FLAIR", "wm")
    assert mean_signal(maps, pure, "FLAIR", "gm") > mean_signal(maps, pure, "FLAIR", "wm")


def test_tumour_appearance(brats_phantom):
    _, subjects = brats_phantom
    files = subjects[1]
    seg, _ = load_volume(files["seg"])
    assert set(np.unique(seg)) == {0, *LABELS.values()}
    image = {c: load_volume(files[c])[0] for c in ("T1", "T1Gd", "FLAIR", "T2")}
    normal = (seg == 0) & (image["T1"] > 0)
    rim, oedema, core = seg == LABELS["enhancing"], seg == LABELS["oedema"], seg == LABELS["necrosis"]
    gain = lambda region: image["T1Gd"][region].mean() / image["T1"][region].mean()
    assert gain(rim) > 1.5 and gain(normal) < 1.15  # gadolinium brightens only the enhancing rim
    assert image["FLAIR"][oedema].mean() > 1.5 * np.median(image["FLAIR"][normal])
    assert image["T2"][core].mean() > 1.5 * np.median(image["T2"][normal])


def test_brats_flavour_is_coregistered_and_skull_stripped(brats_phantom):
    _, subjects = brats_phantom
    affines = {c: load_volume(p)[1].affine for c, p in subjects[2].items()}
    assert all(np.allclose(a, affines["T1"]) for a in affines.values())
    t1, _ = load_volume(subjects[2]["T1"])
    assert (t1[0] == 0).all() and (t1[:, :, -1] == 0).all()


def test_deterministic_for_a_seed(tmp_path):
    cfg = PhantomConfig(flavour="ixi", downsample=4.0, seed=11)
    first = make_subject(1, cfg, tmp_path / "a")
    second = make_subject(1, cfg, tmp_path / "b")
    other = make_subject(1, PhantomConfig(flavour="ixi", downsample=4.0, seed=12), tmp_path / "c")
    a, b, c = (load_volume(f["PD"])[0] for f in (first, second, other))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_the_cli_takes_the_workflow_section_and_its_flags_win(tmp_path):
    """`codebrain phantom --config` carries the section's other keys (the noise here); a flag overrides it."""
    from helpers import run_cli

    section = {"flavour": "ixi", "downsample": 4.0, "seed": 11, "noise": 0.0}
    run_cli("phantom", "--root", str(tmp_path / "quiet"), "--config", json.dumps(section), "--index", "1")
    run_cli("phantom", "--root", str(tmp_path / "seeded"), "--config", json.dumps(section), "--seed", "12", "--index", "1")
    quiet = make_subject(1, PhantomConfig(**section), tmp_path / "direct")
    noisy = make_subject(1, PhantomConfig(**{**section, "noise": 0.05}), tmp_path / "noisy")
    pd = lambda root: load_volume(next(root.rglob("*-PD.nii.gz")))[0]
    assert np.array_equal(pd(tmp_path / "quiet"), load_volume(quiet["PD"])[0])
    assert not np.array_equal(load_volume(quiet["PD"])[0], load_volume(noisy["PD"])[0])
    assert not np.array_equal(pd(tmp_path / "quiet"), pd(tmp_path / "seeded"))
    bad = run_cli("phantom", "--root", str(tmp_path / "bad"), "--config", '{"noise_level": 1}', "--index", "1",
                  check=False)
    assert bad.returncode == 2 and "--config.noise_level: unknown key" in bad.stderr


def test_ixi_flavour_has_real_layout_and_own_grids(ixi_phantom):
    root, subjects = ixi_phantom
    found = discover(root, "ixi", ["T1", "T2", "PD"])
    assert sorted(found) == ["IXI001-Phantom-0001", "IXI002-Phantom-0002", "IXI003-Phantom-0003"]
    assert found["IXI002-Phantom-0002"]["T1"].parent.name == "IXI-T1"
    t1, t2 = (load_volume(subjects[1][c])[1] for c in ("T1", "T2"))
    assert t1.shape != t2.shape and not np.allclose(t1.affine, t2.affine)
    assert subjects[1]["T1.pose"].exists()
