"""Imputation of whole test subjects: every scenario, every missing contrast, written as NIfTI volumes.

Names: <out_dir>/<subject>/<scenario>_<target>.nii.gz, the scenario as bits in contrast order
("010" = only the second contrast given), on the subject's reference grid (affine and header
kept), in the reference's original intensity scale; imputed.tsv lists them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from codebrain.data.dataset import open_store
from codebrain.data.nifti import InputError, write_atomic
from codebrain.evaluation.scenarios import all_scenarios, scenario_name
from codebrain.evaluation.volumes import restack


@torch.no_grad()
def impute(stage1, prior, image: torch.Tensor, available: np.ndarray) -> torch.Tensor:
    """B x N x S x S -> the same with every unavailable channel decoded from its predicted code."""
    mask = torch.from_numpy(available).to(image.device)
    masked = image * mask[None, :, None, None]  # M_s
    common = stage1.common_features(masked)  # F_c
    predicted = prior.predict(prior(masked))  # B x n_code_maps x d' x h x w
    output = masked.clone()
    for t in np.flatnonzero(~available):
        code_map, channel = (0, int(t)) if stage1.cfg.joint_code else (int(t), 0)
        latent = stage1.quantiser.codes_to_latent(predicted[:, code_map])
        output[:, t] = stage1.decoder(latent, common)[:, channel].clamp(0, 1)
    return output


def impute_subjects(stage1, prior, store: Path, references: dict[str, Path], out_dir: Path,
                    split: str = "test", batch_size: int = 32) -> pd.DataFrame:
    slices, summary = open_store(store, split)
    contrasts = summary["contrasts"]
    rows = pd.read_csv(store / f"{split}.tsv", sep="\t")
    geometry = pd.read_csv(store / "geometry.tsv", sep="\t").set_index("subject")
    ranges = pd.read_csv(store / "normalisation.tsv", sep="\t").set_index(["subject", "contrast"])
    device = next(stage1.parameters()).device
    written = []
    for subject, subject_rows in tqdm(rows.groupby("subject"), desc=f"impute {split}", unit="subject"):
        if subject not in references:
            raise InputError(f"no reference volume given for subject {subject}")
        reference = nib.load(references[subject])
        image = torch.from_numpy(np.array(slices[subject_rows["index"].to_numpy()], dtype=np.float32))
        corner = (int(geometry.loc[subject, "x0"]), int(geometry.loc[subject, "y0"]))
        for available in all_scenarios(len(contrasts)):
            imputed = torch.cat([impute(stage1, prior, batch.to(device), available).cpu()
                                 for batch in image.split(batch_size)])
            for t in np.flatnonzero(~available):
                low, high = ranges.loc[(subject, contrasts[t]), ["low", "high"]]
                volume = restack(imputed[:, t].numpy(), subject_rows.z.to_numpy(), corner, low, high, reference)
                path = out_dir / subject / f"{scenario_name(available)}_{contrasts[t]}.nii.gz"
                with write_atomic(path) as tmp:
                    nib.save(volume, str(tmp))
                written.append({"subject": subject, "scenario": scenario_name(available), "target": contrasts[t],
                                "n_inputs": int(available.sum()), "path": str(path)})
    table = pd.DataFrame(written)
    with write_atomic(out_dir / "imputed.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table
