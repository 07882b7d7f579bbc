"""The paper's evaluation of a trained model on the test split: per-scenario table, group means, figures.

Outputs (docs/design.md, "Evaluation"): scenarios.csv, one row per (scenario, target, method) with PSNR,
SSIM x 100 and MAE x 1000 as means over slices, whole slice and inside the brain, and BraSyn's 3D scores of each
subject's volume as means over subjects (evaluation/brasyn.py: SSIM inside and outside the tumour, PSNR in the
brain; the challenge's protocol, a second table beside the paper's);
summary.csv, unweighted means over pairs for One-to-One (one input), Many-to-One (more than one)
and ALL; tables.md laid out like the paper's Tables 1 and 2; exemplars.png, one test slice per
scenario with its error map; code_maps.png, a slice's codes as Stage I encodes and E_prior predicts
them (FSQ models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from codebrain.checkpoints import load_checkpoint
from codebrain.rebuild import codebrain_from, direct_from
from codebrain.data.dataset import open_store, split_labels
from codebrain.evaluation.brasyn import VOLUME_METRICS, evaluate_volumes
from codebrain.evaluation.scenarios import (CODE_METRICS, CodeBrainImputer, DirectImputer, all_scenarios,
                                            evaluate_scenarios, scenario_name)
from codebrain.evaluation.uncertainty import evaluate_uncertainty, samplable, uncertainty_figure
from codebrain.io import default_device, write_atomic

METHOD_NAMES = {"stage2": "CodeBrain", "stage1": "CodeBrain (Stage I)", "direct": "direct regressor",
                "zero": "zero imputation"}
METRICS = ["psnr", "ssim", "mae"]
GROUPS = {"O->O": "one_to_one", "M->O": "many_to_one", "ALL": "all"}  # group -> its MLflow metric prefix


def load_imputer(checkpoint: str | Path, contrasts: list[str] | None, device="cpu",
                 reconstruct: bool = True) -> tuple[object, str]:
    """(imputer, its imputation method) from a CodeBrain Stage II or a direct-regressor checkpoint (refused if
    trained on other contrasts than `contrasts`, when given)."""
    payload = load_checkpoint(checkpoint, ("stage2", "direct"), {"contrasts": list(contrasts)} if contrasts else None)
    return imputer_from(payload, device, reconstruct)


def imputer_from(payload: dict, device="cpu", reconstruct: bool = True) -> tuple[object, str]:
    """reconstruct=False: CodeBrain without its Stage I row (imputing real missing data, which has no true code)."""
    if payload["kind"] == "direct":
        return DirectImputer(direct_from(payload).to(device)), "direct"
    stage1, prior, _ = codebrain_from(payload)
    return CodeBrainImputer(stage1.to(device), prior.to(device), reconstruct), "stage2"


def training_flops(payload: dict) -> dict[str, float]:
    """Training FLOPs behind each method of a checkpoint: CodeBrain is Stage I + Stage II, its Stage I row Stage I
    alone (NaN for checkpoints from before FLOPs were counted)."""
    if payload["kind"] == "direct":
        return {"direct": payload["metrics"].get("train/flops", np.nan)}
    stage1 = payload["stage1"]["metrics"].get("train/flops", np.nan)
    return {"stage1": stage1, "stage2": stage1 + payload["metrics"].get("train/flops", np.nan)}


def selected_steps(payload: dict) -> dict[str, int]:
    """The training step whose weights each method of a checkpoint keeps (keep: best picks it on validation): where
    the best step sits in the budget says whether the budget was the limit."""
    if payload["kind"] == "direct":
        return {"direct": payload["step"]}
    return {"stage1": payload["stage1"]["step"], "stage2": payload["step"]}


def logged_metrics(means: pd.DataFrame, split: str, codes: pd.DataFrame | None = None) -> dict[str, float]:
    """Group means as MLflow metrics: <split>/<group>/<method id>/<metric>, e.g. test/all/stage2/psnr; with the
    code diagnostics (code_means), <split>/codes/<target>/<metric>."""
    method_ids = {name: method for method, name in METHOD_NAMES.items()}
    metrics = {f"{split}/{GROUPS[row.group]}/{method_ids[row.method]}/{k}": row[k]
               for _, row in means.iterrows() for k in ("psnr", "ssim", "mae", "psnr_brain", *VOLUME_METRICS)
               if np.isfinite(row.get(k, np.nan))}
    if codes is not None and not codes.empty:
        metrics.update({f"{split}/codes/{row.target}/{k}": row[k]
                        for _, row in codes.iterrows() for k in CODE_METRICS if k in row})
    return metrics


def group_means(table: pd.DataFrame) -> pd.DataFrame:
    """O->O, M->O and ALL: unweighted means over (scenario, target) pairs, per method."""
    columns = [c for c in table.columns if c.split("_")[0] in METRICS]
    groups = {"O->O": table[table.n_inputs == 1], "M->O": table[table.n_inputs > 1], "ALL": table}
    rows = []
    for group, rows_in_group in groups.items():
        for method, per_method in rows_in_group.groupby("method", sort=False):
            rows.append({"group": group, "method": method, "pairs": len(per_method),
                         **per_method[columns].mean().to_dict()})
    return pd.DataFrame(rows)


def code_means(table: pd.DataFrame) -> pd.DataFrame:
    """CodeBrain's predicted codes against Stage I's, per target: unweighted means over the scenarios that
    miss it (empty for models without discrete codes)."""
    present = [c for c in CODE_METRICS if c in table and table[c].notna().any()]
    if not present:
        return pd.DataFrame()
    rows = table[table[present[0]].notna()]
    return rows.groupby("target", sort=False)[present].mean().reset_index()


def code_table(means: pd.DataFrame) -> str:
    if means.empty:
        return ""
    names = {"code_accuracy": "entries right", "code_accuracy_brain": "entries right (brain)",
             "whole_code_accuracy_brain": "whole codes right (brain)", "level_error_brain": "|level error| (brain)"}
    columns = [c for c in CODE_METRICS if c in means]
    lines = ["", "## Predicted codes against Stage I's (means over the scenarios missing the target)", "",
             "| target | " + " | ".join(names[c] for c in columns) + " |", "|" + " --- |" * (1 + len(columns))]
    lines += [f"| {row.target} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |" for _, row in means.iterrows()]
    return "\n".join(lines) + "\n"


def markdown_tables(table: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Table 1 (every scenario and target, PSNR / SSIM / MAE per method) and Table 2 (group means)."""
    methods = list(dict.fromkeys(table.method))
    header = "| available | target | " + " | ".join(f"{m} PSNR / SSIM / MAE" for m in methods) + " |"
    lines = ["## Per scenario (test split; available contrasts as bits in contrast order)", "", header,
             "|" + " --- |" * (2 + len(methods))]
    for (scenario, target), rows in table.groupby(["scenario", "target"], sort=False):
        by_method = rows.set_index("method")
        cells = [" / ".join(f"{by_method.loc[m, k]:.2f}" for k in METRICS) for m in methods]
        lines.append(f"| {scenario} | {target} | " + " | ".join(cells) + " |")
    lines += ["", "## Means over (scenario, target) pairs", "",
              "| group | method | pairs | PSNR | SSIM | MAE | PSNR (brain) | SSIM (brain) | MAE (brain) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, row in summary.iterrows():
        values = " | ".join(f"{row.get(k, np.nan):.2f}" for k in METRICS + [f"{m}_brain" for m in METRICS])
        lines.append(f"| {row.group} | {row.method} | {row.pairs} | {values} |")
    lines += ["", "## BraSyn's 3D scores (each subject's volume, means over subjects, then over pairs)", "",
              "| group | method | SSIM tumour | SSIM outside | PSNR (brain) |", "| --- | --- | --- | --- | --- |"]
    for _, row in summary.iterrows():
        values = " | ".join(f"{row.get(k, np.nan):.2f}" for k in VOLUME_METRICS)
        lines.append(f"| {row.group} | {row.method} | {values} |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def exemplar_figure(imputer, method: str, slices, contrasts, path: Path, index: int, samples: int = 0) -> None:
    """One test slice as a grid (the paper's Fig. 3): per target two rows, the imputation and its absolute
    error (three with samples: the std of that many sampled decodings), one column per scenario (blank where
    the target is given), the truth in the first column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from codebrain.evaluation.uncertainty import sample_imputations

    image = torch.from_numpy(np.array(slices[index: index + 1], dtype=np.float32)).to(imputer_device(imputer))
    scenarios = all_scenarios(len(contrasts))
    outputs = [imputer(image, available)[0][method].clamp(0, 1).cpu()[0].numpy()
               for available in scenarios]  # per scenario: N x S x S
    spreads = [sample_imputations(imputer.stage1, imputer.prior, image, available, samples)["std"].cpu()[0].numpy()
               for available in scenarios] if samples else []
    per_target = 3 if samples else 2
    rows, columns = per_target * len(contrasts), 1 + len(scenarios)
    fig, axes = plt.subplots(rows, columns, figsize=(1.05 * columns, 1.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for t, target in enumerate(contrasts):
        top, truth = per_target * t, image[0, t].cpu().numpy()
        axes[top, 0].imshow(np.rot90(truth), cmap="gray", vmin=0, vmax=1)
        axes[top, 0].set_title(f"{target} (truth)", fontsize=7)
        for column, (available, output) in enumerate(zip(scenarios, outputs), start=1):
            if top == 0:
                axes[0, column].set_title(scenario_name(available), fontsize=7)
            if available[t]:
                continue
            axes[top, column].imshow(np.rot90(output[t]), cmap="gray", vmin=0, vmax=1)
            axes[top + 1, column].imshow(np.rot90(np.abs(output[t] - truth)), cmap="magma", vmin=0, vmax=0.3)
            if samples:
                axes[top + 2, column].imshow(np.rot90(spreads[column - 1][t]), cmap="viridis", vmin=0, vmax=0.15)
        axes[top, 0].text(-0.08, 0.5, METHOD_NAMES[method], transform=axes[top, 0].transAxes, rotation=90,
                          va="center", ha="right", fontsize=6)
        row_names = ["|error| (0-0.3)"] + ([f"std of {samples} (0-0.15)"] if samples else [])
        for offset, name in enumerate(row_names, start=1):
            axes[top + offset, 1].text(-0.08, 0.5, name, transform=axes[top + offset, 1].transAxes, rotation=90,
                                       va="center", ha="right", fontsize=6)
    fig.suptitle(f"Test slice {index}: columns are the available contrasts as bits in the order "
                 f"{', '.join(contrasts)}", fontsize=8)
    fig.tight_layout()
    with write_atomic(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


@torch.no_grad()
def code_map_figure(imputer, slices, contrasts, path: Path, index: int) -> None:
    """Fig. 6 style: each contrast's code, dimension by dimension, as Stage I encodes it and as E_prior
    predicts it when that contrast alone is missing (quantisers whose codes are levels: FSQ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(imputer, CodeBrainImputer) or imputer.stage1.quantiser.level_counts is None:
        return
    stage1, prior = imputer.stage1.cpu(), imputer.prior.cpu()
    image = torch.from_numpy(np.array(slices[index: index + 1], dtype=np.float32))
    true_codes = stage1.encode(image)[0]  # n_code_maps x d x h x w
    rows = []
    for m in range(stage1.cfg.n_code_maps):
        available = np.ones(len(contrasts), bool)
        if not stage1.cfg.joint_code:
            available[m] = False
        masked = image * torch.from_numpy(available)[None, :, None, None]
        predicted = prior.predict(prior(masked, torch.from_numpy(available)[None]))[0, m]
        name = "joint" if stage1.cfg.joint_code else contrasts[m]
        rows += [(f"{name} Stage I", true_codes[m]), (f"{name} predicted", predicted)]
    d = stage1.cfg.code_dim
    fig, axes = plt.subplots(len(rows), d, figsize=(1.1 * d, 1.15 * len(rows)), squeeze=False)
    for r, (label, codes) in enumerate(rows):
        for i in range(d):
            axes[r, i].imshow(np.rot90(codes[i].numpy()), cmap="viridis", vmin=0, vmax=stage1.quantiser.level_counts[i] - 1)
            axes[r, i].set_xticks([]), axes[r, i].set_yticks([])
            axes[0, i].set_title(f"dim {i}", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=6)
    fig.tight_layout()
    with write_atomic(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def imputer_device(imputer):
    model = imputer.model if isinstance(imputer, DirectImputer) else imputer.stage1
    return next(model.parameters()).device


def evaluate(checkpoint: Path, store: Path, out_dir: Path, contrasts: list[str], split: str = "test",
             batch_size: int = 32, uncertainty_samples: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(group means, code diagnostics per target). Refused when the store, the checkpoint or `contrasts` disagree
    on the contrasts. With uncertainty_samples (CodeBrain with FSQ codes), also uncertainty.csv and
    uncertainty.png (evaluation/uncertainty.py)."""
    device = default_device()
    slices, _ = open_store(store, split, contrasts)
    payload = load_checkpoint(checkpoint, ("stage2", "direct"), {"contrasts": list(contrasts)})
    imputer, method = imputer_from(payload, device)
    labels = split_labels(store, split)
    table = evaluate_scenarios(imputer, slices, contrasts, device, batch_size, brain=True)
    volumes = evaluate_volumes(imputer, slices, pd.read_csv(Path(store) / f"{split}.tsv", sep="\t"), labels,
                               contrasts, device, batch_size)
    table = table.merge(volumes, on=["scenario", "target", "n_inputs", "method"], how="left")
    table["method"] = table.method.map(METHOD_NAMES)
    table = table.sort_values(["n_inputs", "scenario", "target"], kind="stable")
    columns = ["scenario", "target", "n_inputs", "method"] + [c for c in table.columns if c.split("_")[0] in METRICS]
    table = table[columns + [c for c in CODE_METRICS if c in table]]
    means, codes = group_means(table), code_means(table)
    means["train_flops"] = means.method.map({METHOD_NAMES[m]: f for m, f in training_flops(payload).items()})
    means["selected_step"] = means.method.map({METHOD_NAMES[m]: s for m, s in selected_steps(payload).items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    with write_atomic(out_dir / "scenarios.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with write_atomic(out_dir / "summary.csv") as tmp:
        means.to_csv(tmp, index=False, float_format="%.4f")
    with write_atomic(out_dir / "tables.md") as tmp:
        tmp.write_text(markdown_tables(table, means) + code_table(codes))
    sampling = uncertainty_samples and isinstance(imputer, CodeBrainImputer) and samplable(imputer.stage1)
    exemplar_figure(imputer, method, slices, contrasts, out_dir / "exemplars.png", len(slices) // 2,
                    uncertainty_samples if sampling else 0)
    code_map_figure(imputer, slices, contrasts, out_dir / "code_maps.png", len(slices) // 2)
    if sampling:
        calibrated = evaluate_uncertainty(imputer.stage1, imputer.prior, slices, contrasts, device,
                                          uncertainty_samples, batch_size, labels)
        with write_atomic(out_dir / "uncertainty.csv") as tmp:
            calibrated.to_csv(tmp, index=False, float_format="%.5f")
        uncertainty_figure(calibrated, imputer.stage1, imputer.prior, slices, contrasts, out_dir / "uncertainty.png",
                           len(slices) // 2, uncertainty_samples)
    return means, codes
