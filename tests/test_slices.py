from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from codebrain.data.dataset import SliceDataset, open_store, sample_scenario, subject_order
from codebrain.io import InputError
from codebrain.data.slices import SliceConfig, crop_pad, extract_subject, normalisation_range, normalise
from codebrain.data.store import SPLITS, assign_splits, build_store
from conftest import REALDATA

BRATS = REALDATA / "brats2023" / "BraTS-GLI-00000-000"
BRATS_FILES = {c: BRATS / f"BraTS-GLI-00000-000-{s}.nii.gz" for c, s in
               [("T1", "t1n"), ("T2", "t2w"), ("FLAIR", "t2f"), ("T1Gd", "t1c")]}


def test_minmax_and_percentile_normalisation():
    rng = np.random.default_rng(0)
    volume = rng.gamma(2.0, 100.0, size=(20, 20, 10)).astype(np.float32)
    volume[0, 0, 0] = 1e5  # one heavy-tailed voxel, as in real T1Gd
    mask = np.ones(volume.shape, bool)
    low, high = normalisation_range(volume, mask, SliceConfig(normalisation="minmax"))
    scaled = normalise(volume, low, high)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert np.allclose(scaled * (high - low) + low, volume, rtol=1e-5)  # invertible from the stored range
    low, high = normalisation_range(volume, mask, SliceConfig(normalisation="percentile", upper_percentile=99.0))
    assert high == pytest.approx(np.percentile(volume, 99.0))
    robust = normalise(volume, low, high)
    assert np.median(robust) > 10 * np.median(scaled)  # the outlier no longer squashes the brain


def test_crop_pad_keeps_content_and_pads_zeros():
    volume = np.arange(6 * 4 * 2, dtype=np.float32).reshape(6, 4, 2) + 1
    out = crop_pad(volume, (-1, 1), 5)
    assert out.shape == (5, 5, 2)
    assert np.array_equal(out[1:5, 0:3], volume[0:4, 1:4])
    assert (out[0] == 0).all() and (out[:, 3:] == 0).all()


def test_real_brats_slices_with_authors_range(tmp_path):
    cfg = SliceConfig(size=240, normalisation="percentile", upper_percentile=99.5, dtype="float32")
    out = tmp_path / "brats.npz"
    info = extract_subject("BraTS-GLI-00000-000", BRATS_FILES, list(BRATS_FILES), cfg, out, z_range=(37, 116),
                           labels=BRATS / "BraTS-GLI-00000-000-seg.nii.gz")
    npz = np.load(out)
    assert npz["slices"].shape == (80, 4, 240, 240) and info["first_slice"] == 37
    assert 0.0 <= npz["slices"].min() and npz["slices"].max() <= 1.0
    assert set(np.unique(npz["labels"])) <= {0, 1, 2, 3} and (npz["labels"] > 0).any()
    # BraTS is LPS on disk; our slices are RAS: slice k of the store is the flipped raw slice 37 + k
    raw = np.asarray(nib.load(BRATS_FILES["T1"]).dataobj, dtype=np.float32)
    low, high = npz["normalisation"][0]
    expected = crop_pad(normalise(raw[::-1, ::-1, 50:51], low, high), tuple(npz["corner"]), 240)[..., 0]
    assert np.allclose(npz["slices"][13, 0], expected, atol=1e-6)
    t1gd_low, t1gd_high = npz["normalisation"][3]
    assert t1gd_high < np.asarray(nib.load(BRATS_FILES["T1Gd"]).dataobj).max()  # robust upper bound


def test_middle_slices_centre_on_brain(ixi_phantom, tmp_path):
    _, subjects = ixi_phantom
    files = {"T2": subjects[1]["T2"]}
    info = extract_subject("s", files, ["T2"], SliceConfig(n_slices=8, size=48), tmp_path / "s.npz")
    depth = nib.load(subjects[1]["T2"]).shape[2]
    assert info["last_slice"] - info["first_slice"] == 7
    assert 0.25 * depth < (info["first_slice"] + info["last_slice"]) / 2 < 0.75 * depth


def test_whole_brain_extent_trains_on_every_brain_slice_and_evaluates_the_middle(tmp_path):
    case = REALDATA / "brats2018" / "Brats18_TCIA01_425_1"
    files = {c: case / f"Brats18_TCIA01_425_1_{s}.nii.gz" for c, s in [("T1", "t1"), ("T2", "t2"), ("FLAIR", "flair")]}
    middle, whole = (SliceConfig(n_slices=8, size=64, spacing=[3.0, 3.0], train_extent=extent)
                     for extent in ("middle", "brain"))
    extract_subject("a", files, list(files), middle, tmp_path / "middle.npz")
    extract_subject("a", files, list(files), whole, tmp_path / "whole.npz")
    mid, full = np.load(tmp_path / "middle.npz"), np.load(tmp_path / "whole.npz")
    # the raw 1 mm scan (skull-stripped, so non-zero = head) spans these axial millimetres
    raw = np.stack([np.asarray(nib.load(f).dataobj) for f in files.values()]).any(axis=0)
    occupied = np.flatnonzero(raw.any(axis=(0, 1)))
    assert len(full["z"]) == pytest.approx((occupied[-1] - occupied[0] + 1) / 3, abs=3)
    assert len(full["z"]) > 3 * len(mid["z"])
    rows = np.flatnonzero(np.isin(full["z"], mid["z"]))  # the middle K: the same slices, the same crop
    assert np.array_equal(full["slices"][rows], mid["slices"]) and np.array_equal(full["corner"], mid["corner"])

    assignment = {"train": "train", "val": "val", "test": "test"}
    build_store({split: tmp_path / "whole.npz" for split in SPLITS}, assignment, list(files), tmp_path / "store")
    for split in SPLITS:
        array, _ = open_store(tmp_path / "store", split)
        z = pd.read_csv(tmp_path / "store" / f"{split}.tsv", sep="\t").z.to_numpy()
        expected = full if split == "train" else mid
        assert np.array_equal(z, expected["z"]) and np.array_equal(array, expected["slices"])


@pytest.mark.parametrize("n", [3, 10, 57])
def test_splits_are_disjoint_and_deterministic(n):
    subjects = [f"sub-{i:03d}" for i in range(n)]
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    assignment = assign_splits(subjects, fractions, seed=5)
    assert sorted(assignment) == subjects  # every subject in exactly one split
    assert set(assignment.values()) == set(SPLITS)
    assert assignment == assign_splits(list(reversed(subjects)), fractions, seed=5)
    counts = {split: sum(v == split for v in assignment.values()) for split in SPLITS}
    assert counts["train"] >= max(counts["val"], counts["test"])
    if n >= 20:
        assert abs(counts["train"] / n - 0.7) < 0.05


def test_pinned_subjects_keep_their_split_as_the_cohort_grows():
    """config/brats-sample.yaml: the ten-case sample's val and test subjects, pinned, stay val and test in the
    twenty-case cohort, which splits 16 / 2 / 2; pins of absent subjects change nothing."""
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "brats-sample.yaml").read_text())
    splits = config["splits"]
    twenty = sorted(p.name for p in (Path(__file__).parents[2] / "shared" / "realdata" / "brats2018").iterdir()
                    if p.name.startswith("Brats18_"))
    assert len(twenty) == 20
    first_ten = [s for s in twenty if any(f"/{s}/" in url for url in config["download"]["urls"][:50])]
    before = assign_splits(first_ten, {"train": 0.6, "val": 0.2, "test": 0.2}, splits["seed"])
    assert splits["pinned"] == {s: split for s, split in before.items() if split != "train"}
    after = assign_splits(twenty, splits["fractions"], splits["seed"], pinned=splits["pinned"])
    assert all(after[s] == split for s, split in splits["pinned"].items())
    assert sorted(after.values()) == ["test"] * 2 + ["train"] * 16 + ["val"] * 2
    others = [f"sub-{i:03d}" for i in range(10)]
    assert assign_splits(others, splits["fractions"], 3, pinned=splits["pinned"]) == \
        assign_splits(others, splits["fractions"], 3)


def test_split_table_is_followed():
    table = pd.read_csv(Path(__file__).parents[1] / "config" / "splits" / "ixi.tsv", sep="\t")
    subjects = list(table.subject[:50]) + ["IXI999-Unlisted-0000"]
    assignment = assign_splits(subjects, {}, 0, table)
    assert "IXI999-Unlisted-0000" not in assignment
    assert all(assignment[s] == split for s, split in zip(table.subject[:50], table.split[:50]))
    assert table.groupby("subject").split.nunique().max() == 1
    assert table.split.value_counts().to_dict() == {"train": 500, "test": 40, "val": 37}


def make_store(tmp_path, n_subjects=6, contrasts=("T1", "T2", "PD")):
    rng = np.random.default_rng(1)
    files = {}
    for i in range(n_subjects):
        path = tmp_path / f"s{i}.npz"
        k = 3 + i % 2
        np.savez(path, slices=rng.random((k, len(contrasts), 8, 8)).astype(np.float16), z=np.arange(10, 10 + k),
                 normalisation=np.tile([0.0, 100.0 + i], (len(contrasts), 1)), corner=np.array([i, -i]),
                 volume_shape=np.array([20, 20, 30]), voxel_size=np.array([1.0, 1.0, 1.0]))
        files[f"s{i}"] = path
    assignment = assign_splits(sorted(files), {"train": 0.5, "val": 0.25, "test": 0.25}, 0)
    summary = build_store(files, assignment, list(contrasts), tmp_path / "store")
    return files, assignment, summary


def test_store_rows_match_subject_slices(tmp_path):
    files, assignment, summary = make_store(tmp_path)
    seen = set()
    for split in SPLITS:
        array, _ = open_store(tmp_path / "store", split)
        rows = pd.read_csv(tmp_path / "store" / f"{split}.tsv", sep="\t")
        assert len(rows) == len(array) == summary["splits"][split]["slices"]
        assert not seen & set(rows.subject)
        seen |= set(rows.subject)
        for subject, group in rows.groupby("subject"):
            assert assignment[subject] == split
            assert np.array_equal(array[group["index"].to_numpy()], np.load(files[subject])["slices"])
    assert seen == set(files)
    normalisation = pd.read_csv(tmp_path / "store" / "normalisation.tsv", sep="\t")
    assert len(normalisation) == 3 * len(files)


def test_store_with_other_contrasts_is_refused(tmp_path):
    make_store(tmp_path)
    with pytest.raises(InputError, match="contrasts"):
        SliceDataset(tmp_path / "store", "train", contrasts=["T1", "T2", "FLAIR"])


def test_scenario_sampler_covers_every_k_and_masks_the_anchor():
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5):
        counts = set()
        for _ in range(400):
            scenario = sample_scenario(n, rng)
            n_masked = int((~scenario.available).sum())
            assert 1 <= n_masked <= n - 1
            assert not scenario.available[scenario.anchor]
            counts.add(n_masked)
        assert counts == set(range(1, n))


def test_dataset_items_are_deterministic_per_epoch(tmp_path):
    make_store(tmp_path)
    dataset = SliceDataset(tmp_path / "store", "train", seed=3)
    item = dataset[2]
    assert item["image"].dtype == torch.float16 and item["image"].shape == (3, 8, 8)
    assert torch.equal(item["image"], torch.from_numpy(np.array(dataset.slices[2])))
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))  # the batched read path
    assert torch.equal(batch["image"], torch.stack([dataset[i]["image"] for i in range(4)]))
    assert torch.equal(batch["anchor"], torch.tensor([dataset[i]["anchor"] for i in range(4)]))
    assert not item["scenario_mask"][item["anchor"]]
    masks = [dataset[i]["scenario_mask"].tolist() for i in range(len(dataset))]
    again = SliceDataset(tmp_path / "store", "train", seed=3)  # a fresh instance, as a resumed run builds
    assert masks == [again[i]["scenario_mask"].tolist() for i in range(len(again))]
    other = SliceDataset(tmp_path / "store", "train", seed=4)
    assert masks != [other[i]["scenario_mask"].tolist() for i in range(len(other))]
    draws = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        draws.append([(tuple(dataset.scenario(i).available), dataset.scenario(i).anchor) for i in range(len(dataset))])
    assert len({tuple(d) for d in draws}) > 1


def test_a_subject_subset_nests_and_keeps_each_slices_draw(tmp_path):
    files, assignment, _ = make_store(tmp_path, n_subjects=12)
    train = sorted(s for s, split in assignment.items() if split == "train")
    order = subject_order(tmp_path / "store", "train")
    assert sorted(order) == train and order != train  # a seeded order, not the names'
    table = pd.read_csv(tmp_path / "store" / "train.tsv", sep="\t")
    whole = SliceDataset(tmp_path / "store", "train", seed=3)
    previous = set()
    for n in (2, 4, len(train)):
        subset = SliceDataset(tmp_path / "store", "train", seed=3, subjects=n)
        chosen = set(order[:n])
        assert previous <= chosen  # 2 in 4 in all
        previous = chosen
        rows = table.index[table.subject.isin(chosen)].to_numpy()
        assert len(subset) == sum(len(np.load(files[s])["z"]) for s in chosen) == len(rows)
        for i, row in enumerate(rows):  # the subject's own slices, with the scenario the whole split draws for them
            item, same = subset[i], whole[int(row)]
            assert torch.equal(item["image"], torch.from_numpy(np.load(files[table.subject[row]])["slices"][
                table.z[row] - 10]))
            assert torch.equal(item["scenario_mask"], same["scenario_mask"]) and item["anchor"] == same["anchor"]
    with pytest.raises(InputError, match=f"subjects: {len(train) + 1} asked.*has {len(train)} subjects"):
        SliceDataset(tmp_path / "store", "train", subjects=len(train) + 1)


def test_augmentation_moves_every_contrast_alike_and_is_repeatable(tmp_path):
    """A stack of three equal channels stays equal (one transform for the stack); flips and rot90 are exact
    permutations of the pixels; the same (seed, epoch, index) gives the same transform; a kill-free rerun of an
    epoch therefore sees the same slices."""
    from codebrain.data.augment import augment

    make_store(tmp_path)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    plane = np.exp(-((yy - 12) ** 2 + (xx - 18) ** 2) / 60) + 0.1 * ndimage.gaussian_filter(rng.random((32, 32)), 1)
    stack = np.stack([plane] * 3)
    for seed in range(20):
        out = augment(stack, np.random.default_rng(seed), ["flip", "rot90", "affine", "elastic"])
        assert out.shape == stack.shape and np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[2])
        again = augment(stack, np.random.default_rng(seed), ["flip", "rot90", "affine", "elastic"])
        assert np.array_equal(out, again)
    exact = [augment(stack, np.random.default_rng(seed), ["flip", "rot90"]) for seed in range(20)]
    assert all(np.array_equal(np.sort(e.ravel()), np.sort(stack.ravel())) for e in exact)  # the same pixels
    assert sum(not np.array_equal(e, stack) for e in exact) >= 10  # moved in most draws (p = 3/4)
    smooth = [augment(stack, np.random.default_rng(seed), ["affine"]) for seed in range(8)]
    moved = [s for s in smooth if not np.array_equal(s, stack)]
    assert moved and all(np.corrcoef(s[0].ravel(), plane.ravel())[0, 1] > 0.5 for s in moved)  # small transforms
    with pytest.raises(ValueError, match="unknown kinds"):
        SliceDataset(tmp_path / "store", "train", augment=["mixup"])


def test_augmentation_applies_the_kinds_in_their_order_and_kornias_elastic_field():
    """The release's order (elastic, flip, vflip, rot90, affine) is the list's: vflip then rot90 is not rot90 then
    vflip. The elastic displacement is kornia's RandomElasticTransform at the release's kernel 63, sigma 32,
    alpha 1 on 256 px: uniform noise in [-1, 1], a reflect-padded 63 x 63 Gaussian blur, in the normalised grid."""
    from codebrain.data import augment as aug

    plane = np.arange(36.0).reshape(6, 6)
    stack = np.stack([plane, plane])
    one, other = ([aug.augment(stack, np.random.default_rng(seed), kinds) for seed in range(40)]
                  for kinds in (["vflip", "rot90"], ["rot90", "vflip"]))
    assert any(not np.array_equal(a, b) for a, b in zip(one, other))

    size = 256
    field = aug.elastic_field(np.random.default_rng(5), size)
    noise = torch.from_numpy(np.random.default_rng(5).uniform(-1, 1, (2, size, size)))[:, None]
    x = torch.arange(63, dtype=torch.float64) - 31
    kernel = torch.exp(-x ** 2 / (2 * 32.0 ** 2))
    kernel = kernel / kernel.sum()
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(noise, (31, 31, 0, 0), mode="reflect"),
                                         kernel.view(1, 1, 1, 63))
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(blurred, (0, 0, 31, 31), mode="reflect"),
                                         kernel.view(1, 1, 63, 1))
    np.testing.assert_allclose(field, blurred[:, 0].numpy() * 1.0 * (size - 1) / 2, rtol=1e-6, atol=1e-9)


def test_augmented_dataset_items_are_deterministic_and_refuse_cached_codes(tmp_path):
    make_store(tmp_path)
    plain = SliceDataset(tmp_path / "store", "train", seed=3)
    augmented = SliceDataset(tmp_path / "store", "train", seed=3, augment=["flip", "rot90"])
    again = SliceDataset(tmp_path / "store", "train", seed=3, augment=["flip", "rot90"])
    assert all(torch.equal(augmented[i]["image"], again[i]["image"]) for i in range(len(plain)))
    again.set_epoch(1)  # another epoch draws other transforms
    assert any(not torch.equal(augmented[i]["image"], again[i]["image"]) for i in range(len(plain)))
    assert augmented[2]["image"].dtype == plain[2]["image"].dtype
    assert any(not torch.equal(augmented[i]["image"], plain[i]["image"]) for i in range(len(plain)))
    assert torch.equal(augmented[2]["scenario_mask"], plain[2]["scenario_mask"])  # the scenario draw is unchanged
    with pytest.raises(ValueError, match="cached codes"):
        SliceDataset(tmp_path / "store", "train", codes_dir=tmp_path, augment=["flip"])


BRATS18 = REALDATA / "brats2018" / "Brats18_TCIA01_425_1"
BRATS18_FILES = {c: BRATS18 / f"{BRATS18.name}_{s}.nii.gz" for c, s in
                 [("T1", "t1"), ("T2", "t2"), ("FLAIR", "flair"), ("T1Gd", "t1ce")]}


def test_spacing_resamples_a_real_1mm_case_to_3mm_and_back(tmp_path):
    """At 3 mm the working grid's voxel centres fall on every third 1 mm centre, so the linearly resampled
    slices must equal the raw voxels there; labels (2018 convention) come nearest-neighbour, as 0..3."""
    from codebrain.data.slices import canonical
    from codebrain.evaluation.volumes import restack

    cfg = SliceConfig(n_slices=20, size=64, normalisation="percentile", dtype="float32", spacing=[3, 3])
    out = tmp_path / "brats18.npz"
    extract_subject(BRATS18.name, BRATS18_FILES, list(BRATS18_FILES), cfg, out,
                    labels=BRATS18 / f"{BRATS18.name}_seg.nii.gz")
    npz = np.load(out)
    assert npz["slices"].shape == (20, 4, 64, 64) and list(npz["voxel_size"]) == [3, 3, 3]
    assert tuple(npz["volume_shape"]) == (81, 81, 53)  # voxel centres 0, 3, ..., 240 mm cover 0..239 (and 0..154)
    image = nib.load(BRATS18_FILES["T1"])
    raw = canonical(np.asarray(image.dataobj, dtype=np.float32), image)  # 240 x 240 x 155, RAS
    low, high = npz["normalisation"][0]
    z = npz["z"][5]
    expected = crop_pad(normalise(raw[::3, ::3, 3 * z][:, :, None], low, high), tuple(npz["corner"]), 64)[..., 0]
    assert np.allclose(npz["slices"][5, 0], expected, atol=1e-5)
    seg_image = nib.load(BRATS18 / f"{BRATS18.name}_seg.nii.gz")
    seg = canonical(np.asarray(seg_image.dataobj), seg_image)
    expected_labels = crop_pad(np.where(seg == 4, 3, seg)[::3, ::3, 3 * z][:, :, None], tuple(npz["corner"]), 64)
    assert np.array_equal(npz["labels"][5], expected_labels[..., 0])
    assert 3 in np.unique(npz["labels"]) and 4 not in np.unique(npz["labels"])

    back = restack([(npz["slices"][:, 0], tuple(npz["corner"]))], npz["z"], low, high, image, spacing=[3, 3])
    assert back.shape == image.shape and np.allclose(back.affine, image.affine)
    original = np.asarray(image.dataobj, dtype=np.float32)
    covered = back.get_fdata() != 0
    brain = original > 0
    inside = covered & brain
    slab = np.zeros_like(brain)
    slab[:, :, 3 * npz["z"][0]: 3 * npz["z"][-1] + 1] = True  # the sliced slab (LPS on disk: z is S as in RAS)
    assert inside.sum() >= 0.95 * (brain & slab).sum()  # the 64 x 64 window at 3 mm covers the whole brain
    # at the working grid's voxel centres (every third 1 mm voxel) the way back is exact: the slice's value
    restacked = canonical(back.get_fdata(), image)
    x0, y0 = npz["corner"]
    expected = npz["slices"][5, 0] * (high - low) + low  # 64 x 64, rows x0.., columns y0.. of the 3 mm grid
    window = restacked[3 * x0: 3 * (x0 + 64): 3, 3 * y0: 3 * (y0 + 64): 3, 3 * z]
    assert np.allclose(window, expected[: window.shape[0], : window.shape[1]], atol=1e-3 * (high - low))
