"""Imputation of whole test subjects: every scenario, every missing contrast, written as NIfTI volumes.

Names: <out_dir>/<subject>/<scenario>_<target>.nii.gz, the scenario as bits in contrast order
("010" = only the second contrast given), on the subject's reference grid (affine and header
kept), in the reference's original intensity scale; with uncertainty samples, the per-voxel std
of the sampled decodings beside each (<scenario>_<target>_std.nii.gz, same scale); imputed.tsv
lists them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from codebrain.checkpoints import load_checkpoint
from codebrain.data.dataset import open_store
from codebrain.evaluation.brasyn import grid_scores
from codebrain.evaluation.evaluate import imputer_from
from codebrain.evaluation.scenarios import CodeBrainImputer, all_scenarios, scenario_name
from codebrain.evaluation.uncertainty import check_samplable, sample_imputations, samplable
from codebrain.evaluation.volumes import restack
from codebrain.io import InputError, write_atomic


def load_imputation_model(checkpoint: Path, device="cpu") -> tuple[object, dict]:
    """(imputer, the training store's summary: size, slicing, voxel size) of either kind of imputer checkpoint,
    CodeBrain's Stage II or the direct regressor."""
    payload = load_checkpoint(checkpoint, ("stage2", "direct"))
    imputer, _ = imputer_from(payload, device, reconstruct=False)
    return imputer, (payload["stage1"] if payload["kind"] == "stage2" else payload).get("data", {})


def sampling_networks(imputer) -> tuple:
    """(Stage I, E_prior) to draw codes from: uncertainty needs a CodeBrain model with FSQ codes."""
    if not isinstance(imputer, CodeBrainImputer):
        raise InputError("uncertainty samples need CodeBrain's code distributions; the direct regressor has none")
    check_samplable(imputer.stage1)
    return imputer.stage1, imputer.prior


@torch.no_grad()
def impute(imputer, image: torch.Tensor, available: np.ndarray) -> torch.Tensor:
    """B x N x S x S -> the same with every unavailable channel imputed (CodeBrain: decoded from its predicted
    code), clamped to [0, 1]."""
    (imputed,) = imputer(image, available)[0].values()
    return imputed.clamp(0, 1)


def subject_truth(files: dict[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray]:
    """({contrast: volume}, tumour mask or None, brain mask as slicing finds it) of a subject's real volumes
    ({contrast: path, "seg": path} on its reference grid)."""
    from codebrain.data.slices import brain_mask

    volumes = {kind: np.asarray(nib.load(path).dataobj, dtype=np.float32) for kind, path in files.items()}
    labels = volumes.pop("seg", None)
    return volumes, None if labels is None else labels > 0, brain_mask(list(volumes.values()))


def impute_subjects(imputer, store: Path, references: dict[str, Path], out_dir: Path,
                    split: str = "test", batch_size: int = 32, uncertainty_samples: int = 0,
                    truths: dict[str, dict[str, Path]] | None = None) -> pd.DataFrame:
    """uncertainty_samples K > 0 (CodeBrain with FSQ codes; others skip it): the std of K sampled decodings beside
    each image. truths ({subject: {contrast: path, "seg": path}}): each imputed volume also gets BraSyn's 3D scores
    against the real one, on the subject's grid (brasyn.grid_scores)."""
    codebrain = isinstance(imputer, CodeBrainImputer) and samplable(imputer.stage1)
    samples = uncertainty_samples if codebrain else 0
    slices, summary = open_store(store, split)
    contrasts = summary["contrasts"]
    rows = pd.read_csv(store / f"{split}.tsv", sep="\t")
    geometry = pd.read_csv(store / "geometry.tsv", sep="\t").set_index("subject")
    ranges = pd.read_csv(store / "normalisation.tsv", sep="\t").set_index(["subject", "contrast"])
    spacing = summary.get("slicing", {}).get("spacing")
    device = imputer.device
    written = []
    for subject, subject_rows in tqdm(rows.groupby("subject"), desc=f"impute {split}", unit="subject"):
        if subject not in references:
            raise InputError(f"no reference volume given for subject {subject}")
        reference = nib.load(references[subject])
        image = torch.from_numpy(np.array(slices[subject_rows["index"].to_numpy()], dtype=np.float32))
        corner = (int(geometry.loc[subject, "x0"]), int(geometry.loc[subject, "y0"]))
        if truths is not None:
            if subject not in truths:
                raise InputError(f"no real volumes given for subject {subject} to score its imputations against")
            truth, tumour, brain = subject_truth(truths[subject])
        for available in all_scenarios(len(contrasts)):
            if samples:
                drawn = [sample_imputations(imputer.stage1, imputer.prior, batch.to(device), available, samples)
                         for batch in image.split(batch_size)]
                imputed, spread = (torch.cat([d[key].cpu() for d in drawn]) for key in ("hard", "std"))
            else:
                imputed = torch.cat([impute(imputer, batch.to(device), available).cpu()
                                     for batch in image.split(batch_size)])
            for t in np.flatnonzero(~available):
                low, high = ranges.loc[(subject, contrasts[t]), ["low", "high"]]
                path = out_dir / subject / f"{scenario_name(available)}_{contrasts[t]}.nii.gz"
                outputs = [(imputed[:, t], path, low, high)]
                if samples:  # a spread in [0, 1] units scales by (high - low) alone
                    outputs.append((spread[:, t], std_path(path), 0.0, high - low))
                volumes = []
                for channel, target_path, offset, scale in outputs:
                    volumes.append(restack([(channel.numpy(), corner)], subject_rows.z.to_numpy(), offset,
                                           offset + scale, reference, spacing))
                    with write_atomic(target_path) as tmp:
                        nib.save(volumes[-1], str(tmp))
                scores = {} if truths is None else grid_scores(truth[contrasts[t]], volumes[0].get_fdata(
                    dtype=np.float32), tumour, brain)
                written.append({"subject": subject, "scenario": scenario_name(available), "target": contrasts[t],
                                "n_inputs": int(available.sum()), "path": str(path),
                                "std_path": str(std_path(path)) if samples else "", **scores})
    table = pd.DataFrame(written)
    with write_atomic(out_dir / "imputed.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def trained_spacing(data: dict) -> list[float] | None:
    """[in-plane, through-plane] mm the model's slices were cut at: the store's slices.spacing, else its volumes'
    median voxel size (None for a store written before voxel sizes were recorded)."""
    spacing = data.get("slicing", {}).get("spacing")
    if spacing:
        return [float(v) for v in spacing]
    if "voxel_size" in data:
        x, y, z = data["voxel_size"]
        return [(x + y) / 2, z]
    return None


def std_path(out: Path) -> Path:
    """Where `codebrain impute --uncertainty` writes the per-voxel std beside the image: <name>_std.nii.gz."""
    name = out.name.removesuffix(".gz").removesuffix(".nii")
    return out.with_name(f"{name}_std{out.name[len(name):]}")


def impute_scans(imputer, data: dict, inputs: dict[str, Path], target: str, out: Path,
                 register: bool = False, outside: str = "impute", work_dir: Path | None = None,
                 uncertainty_samples: int = 0, std_out: Path | None = None) -> dict:
    """A user's own scans -> the target contrast as NIfTI on the first input's grid.

    The scans are resampled to the voxel size the model was trained at (when theirs differs), sliced as the
    model's training store was (data = its store.json: size, slicing), each normalised to [0, 1]; a brain wider
    than the trained window is imputed in overlapping tiles; the result is resampled back onto the first input's
    grid, in normalised units, as a missing contrast has no intensity scale of its own. Brain slices outside the
    K middle ones the model was trained on are imputed too (outside="impute") or left at 0 ("skip").
    With uncertainty_samples K, the std of K images decoded from sampled codes goes to std_out (default beside the
    image, `std_path`).
    """
    from codebrain.data.nifti import save_volume
    from codebrain.data.slices import (cut_slices, grid_voxel_size, load_subject, slice_config, slice_range,
                                       tile_corners)

    contrasts = imputer.contrasts
    unknown = sorted(set(inputs) - set(contrasts)) + ([target] if target not in contrasts else [])
    if unknown:
        raise InputError(f"unknown contrast(s) {unknown}: this model knows {contrasts}")
    if target in inputs:
        raise InputError(f"--target {target} is also an input; nothing to impute")
    if outside not in ("impute", "skip"):
        raise InputError(f"--outside {outside!r}: use impute or skip")
    if register:
        from codebrain.data.registration import register_subject

        reference = next(iter(inputs))
        register_subject(dict(inputs), reference, work_dir, "rigid", 0)
        inputs = {c: work_dir / f"{c}.nii.gz" for c in inputs}
    cfg = slice_config(data.get("slicing", {}))
    size = data["size"]
    first = next(iter(inputs))
    spacing = trained_spacing(data)
    own = grid_voxel_size(nib.load(inputs[first]), None)
    if spacing is not None and np.allclose(own, [spacing[0], spacing[0], spacing[1]], rtol=0.02):
        spacing = None  # the scan is at the trained voxel size already: reorient only, no interpolation
    volumes, images, mask = load_subject(inputs, f"pass --register to register the inputs to {inputs[first]}",
                                         spacing)
    occupied = np.flatnonzero(mask.any(axis=(0, 1)))
    trained_first, trained_last = slice_range(mask, min(cfg.n_slices, mask.shape[2]), inputs[first])
    if cfg.train_extent == "brain":  # the model saw every brain slice of its training subjects
        trained_first, trained_last = int(occupied[0]), int(occupied[-1])
    z = np.arange(occupied[0], occupied[-1] + 1) if outside == "impute" else np.arange(trained_first, trained_last + 1)
    available = np.array([c in inputs for c in contrasts])
    device = imputer.device
    if uncertainty_samples:
        stage1, prior = sampling_networks(imputer)
    tiles, std_tiles = [], []
    corners = tile_corners(mask[:, :, z], size)
    for corner in tqdm(corners, desc="impute windows", unit="window", disable=len(corners) == 1):
        given, _, _ = cut_slices(volumes, inputs, mask, z, size, cfg, corner)  # K x inputs x S x S
        stack = np.zeros((len(z), len(contrasts), size, size), np.float32)
        stack[:, [contrasts.index(c) for c in inputs]] = given
        batches = torch.from_numpy(stack).split(32)
        if uncertainty_samples:
            samples = [sample_imputations(stage1, prior, batch.to(device), available, uncertainty_samples)
                       for batch in batches]
            imputed = torch.cat([s["hard"].cpu() for s in samples])
            std = torch.cat([s["std"].cpu() for s in samples])
            std_tiles.append((std[:, contrasts.index(target)].numpy(), corner))
        else:
            imputed = torch.cat([impute(imputer, batch.to(device), available).cpu() for batch in batches])
        tiles.append((imputed[:, contrasts.index(target)].numpy(), corner))
    volume = restack(tiles, z, 0.0, 1.0, images[first], spacing)
    save_volume(volume.get_fdata(dtype=np.float32), images[first].affine, out)
    if uncertainty_samples:
        spread = restack(std_tiles, z, 0.0, 1.0, images[first], spacing)
        std_out = std_out or std_path(out)
        save_volume(spread.get_fdata(dtype=np.float32), images[first].affine, std_out)
    outside_count = int(len(occupied) - (trained_last - trained_first + 1))
    return {"slices": len(z), "trained_range": [int(trained_first), int(trained_last)],
            "brain_slices": [int(occupied[0]), int(occupied[-1])], "outside_trained_range": outside_count,
            "outside": outside, "input_voxel_size": own, "resampled_to": spacing,
            "windows": len(corners), "window": "tiles" if len(corners) > 1 else "pad",
            "std": str(std_out) if uncertainty_samples else None}
