"""Downstream check (the paper's Table 4): does an imputed contrast serve a tumour segmenter like the real one?

A 2D U-Net (MONAI's) learns the tumour labels from the real, full-contrast training slices.
On the test split, for every "N-1 -> 1" scenario the missing contrast is zero-filled, imputed by
each model, or real, and the segmenter's whole tumour (any label > 0) is compared with the
ground truth (2D per slice and 3D per subject volume) and with the segmenter's own prediction
from all real contrasts (the "(Seg.)" rows): how much of its answer the missing contrast changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from codebrain.checkpoints import save_checkpoint
from codebrain.data.dataset import open_store, split_labels
from codebrain.evaluation.scenarios import scenario_name
from codebrain.io import InputError, default_device, write_atomic
from codebrain.models.segmenter import N_CLASSES, SegmenterConfig, build_segmenter


def open_labels(store: Path, split: str) -> np.ndarray:
    path = Path(store) / f"{split}_labels.npy"
    labels = split_labels(store, split)
    if labels is None:
        raise InputError(f"{path}: the slice store has no labels (dataset.labels: true, and a seg volume per subject)")
    if labels.max() >= N_CLASSES:
        raise InputError(f"{path}: label {int(labels.max())} found; expected BraTS labels 0..{N_CLASSES - 1}")
    return labels


def train_segmenter(store: Path, cfg: SegmenterConfig, out: Path, tracker=None) -> dict:
    """DiceCE on the real full-contrast training slices; the checkpoint holds the U-Net and its config."""
    from monai.losses import DiceCELoss

    device = default_device()
    slices, summary = open_store(store, "train")
    labels = open_labels(store, "train")
    cfg = cfg.model_copy(update={"contrasts": summary["contrasts"]})
    torch.manual_seed(cfg.seed)
    model = build_segmenter(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    for step in (bar := tqdm(range(1, cfg.steps + 1), desc="segmenter", unit="step", mininterval=10)):
        index = np.sort(rng.choice(len(slices), cfg.batch_size, replace=len(slices) < cfg.batch_size))
        image = torch.from_numpy(np.array(slices[index], dtype=np.float32)).to(device)  # B x N x S x S
        target = torch.from_numpy(np.array(labels[index], dtype=np.int64))[:, None].to(device)  # B x 1 x S x S
        loss = loss_fn(model(image), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if tracker is not None:
                tracker.log_metrics({"train/dice_ce": loss.item()}, step)
    model.eval()
    val_dice = float(np.nanmean(dice(predict_tumour(model, open_store(store, "val")[0]), open_labels(store, "val") > 0)))
    metrics = {"val/dice_wt_2d": val_dice}
    save_checkpoint(out, "segmenter", model.cpu().state_dict(), cfg, cfg.steps, metrics, data=summary)
    return metrics


@torch.no_grad()
def predict_tumour(model, slices, batch_size: int = 32) -> np.ndarray:
    """K x N x S x S (array or tensor) -> K x S x S whole-tumour masks (argmax label > 0)."""
    device = next(model.parameters()).device
    masks = []
    for start in range(0, len(slices), batch_size):
        image = torch.as_tensor(np.asarray(slices[start: start + batch_size], dtype=np.float32)).to(device)
        masks.append((model(image).argmax(1) > 0).cpu().numpy())
    return np.concatenate(masks)


def dice(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice per leading index over the rest (MONAI's compute_dice); NaN where both masks are empty: nothing to
    find and nothing found is no score, not a perfect one (MONAI would give 1)."""
    from monai.metrics import compute_dice

    prediction, truth = prediction.reshape(len(prediction), 1, -1), truth.reshape(len(truth), 1, -1)  # B x 1 x voxels
    scores = compute_dice(torch.from_numpy(prediction), torch.from_numpy(truth), include_background=True,
                          ignore_empty=False)[:, 0].double().numpy()
    return np.where(prediction.any((1, 2)) | truth.any((1, 2)), scores, np.nan)


def dice_2d_3d(prediction: np.ndarray, truth: np.ndarray, subjects: np.ndarray) -> tuple[float, float]:
    """Mean over slices where either mask is non-empty (2D) and over subject volumes (3D)."""
    per_volume = [dice(prediction[subjects == s][None], truth[subjects == s][None])[0] for s in np.unique(subjects)]
    return float(np.nanmean(dice(prediction, truth))), float(np.nanmean(per_volume))


@torch.no_grad()
def evaluate_segmentation(segmenter, imputers: dict[str, tuple], store: Path, split: str = "test",
                          batch_size: int = 32) -> pd.DataFrame:
    """Rows (scenario, missing, method, dice_2d, dice_3d, dice_2d_vs_full, dice_3d_vs_full).

    imputers: {name: (imputer, method)} as evaluate.load_imputer returns them; "zero-filled" and
    "all real" are added. Dice is for the whole tumour.
    """
    slices, summary = open_store(store, split)
    contrasts = summary["contrasts"]
    truth = open_labels(store, split) > 0
    subjects = pd.read_csv(Path(store) / f"{split}.tsv", sep="\t").subject.to_numpy()
    image = torch.from_numpy(np.array(slices, dtype=np.float32))  # K x N x S x S
    full = predict_tumour(segmenter, image, batch_size)
    rows = []

    def add(scenario, missing, method, prediction):
        rows.append({"scenario": scenario, "missing": missing, "method": method,
                     **dict(zip(("dice_2d", "dice_3d"), dice_2d_3d(prediction, truth, subjects))),
                     **dict(zip(("dice_2d_vs_full", "dice_3d_vs_full"), dice_2d_3d(prediction, full, subjects)))})

    device = next(segmenter.parameters()).device
    for t, missing in enumerate(tqdm(contrasts, desc="segmentation", unit="scenario")):
        available = np.arange(len(contrasts)) != t
        scenario = scenario_name(available)
        add(scenario, missing, "zero-filled", predict_tumour(segmenter, image * torch.from_numpy(available)[:, None, None]))
        for name, (imputer, method) in imputers.items():
            imputed = torch.cat([imputer(batch.to(device), available)[0][method].clamp(0, 1).cpu()
                                 for batch in image.split(batch_size)])
            add(scenario, missing, name, predict_tumour(segmenter, imputed, batch_size))
        add(scenario, missing, "all real", full)
    return pd.DataFrame(rows)


def write_tables(table: pd.DataFrame, out_dir: Path) -> None:
    """dice.csv and dice.md (the paper's Table 4 layout) in out_dir."""
    with write_atomic(Path(out_dir) / "dice.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with write_atomic(Path(out_dir) / "dice.md") as tmp:
        tmp.write_text(markdown_table(table))


def logged_metrics(table: pd.DataFrame, split: str) -> dict[str, float]:
    """Mean Dice per method as MLflow metrics: <split>/<method, spaces as _>/<dice_2d | dice_3d | dice_3d_vs_full>."""
    means = table.groupby("method", sort=False)[["dice_2d", "dice_3d", "dice_3d_vs_full"]].mean()
    return {f"{split}/{method.replace(' ', '_')}/{k}": v for method, row in means.iterrows() for k, v in row.items()}


def markdown_table(table: pd.DataFrame) -> str:
    """Table 4 layout: a row per method, a column per missing contrast (Dice 3D / 2D, whole tumour);
    then the same against the segmentation from all real contrasts ("(Seg.)")."""
    missing = list(dict.fromkeys(table.missing))
    lines = ["| method | " + " | ".join(f"missing {m}: Dice 3D / 2D" for m in missing) + " |",
             "| --- |" + " --- |" * len(missing)]
    for suffix, label in (("", ""), ("_vs_full", " (Seg.)")):
        for method, rows in table.groupby("method", sort=False):
            by_missing = rows.set_index("missing")
            cells = [f"{by_missing.loc[m, 'dice_3d' + suffix]:.3f} / {by_missing.loc[m, 'dice_2d' + suffix]:.3f}"
                     for m in missing]
            lines.append(f"| {method}{label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
