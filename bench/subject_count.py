"""The subject-count study's table, trend and figure (issue 29; config/study/subjects.yaml), from a finished run:

    python bench/subject_count.py --configfile config/brats-sample.yaml config/study/subjects.yaml \
        --out docs/figures/subject-count-brats2018-sample.png

Each experiment is a learner (CodeBrain's protocol, or the direct regressor) at a number of training subjects (its
`subjects`, else the whole training split). From metrics/<experiment>/summary.csv (experiments not evaluated yet
are left out), the test split's ALL-group scores: the paper's 2D slice means (PSNR, SSIM) and BraSyn's 3D volume
scores; from the checkpoints, the validation PSNR and the step of the weights each learner kept (keep: best). Stage I's ceiling is the paper protocol's Stage I. The gap is the direct
regressor's test PSNR minus CodeBrain's (paper); a straight line through the gaps against log(subjects) says where it
would cross zero, if it narrows. --earlier CSV (an earlier run's subject_count.csv) keeps the rows of experiments
this run has not evaluated, so a study can be finished on another day, or machine, one learner at a time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

METHODS = {"CodeBrain": "stage2", "CodeBrain (Stage I)": "stage1", "direct regressor": "direct"}
SCORES = ["psnr", "ssim", "ssim_tumour_3d", "ssim_outside_3d", "psnr_brain_3d"]


def merged_config(paths: list[Path]) -> dict:
    """The config Snakemake builds from `--configfile A B`: later files update earlier ones, key by key."""
    from snakemake.utils import update_config

    config = {}
    for path in paths:
        update_config(config, yaml.safe_load(Path(path).read_text()))
    return config


def learners(config: dict, train_subjects: int) -> pd.DataFrame:
    """One row per experiment: its learner and its number of training subjects."""
    rows = []
    for name, section in config["experiments"].items():
        direct = section.get("method") == "direct"
        stage = section.get("train" if direct else "stage2") or {}
        rows.append({"experiment": name, "learner": "direct" if direct else section.get("protocol", "paper"),
                     "subjects": stage.get("subjects") or train_subjects})
    return pd.DataFrame(rows)


def validation_psnr(payload: dict, method: str) -> float:
    """The one-missing validation PSNR at the kept weights (the paper's model selection)."""
    metrics = payload["stage1"]["metrics"] if method == "stage1" else payload["metrics"]
    return float(metrics.get(f"val/psnr_{method}_one_missing", np.nan))


def study_table(results: Path, config: dict) -> pd.DataFrame:
    """Rows (learner, subjects): test scores, best step, validation PSNR; Stage I's ceiling as learner 'stage1'."""
    store = json.loads((results / "slices" / "store.json").read_text())
    experiments = learners(config, store["splits"]["train"]["subjects"]).set_index("experiment")
    found = [name for name in experiments.index if (results / "metrics" / name / "summary.csv").is_file()]
    if not found:
        raise SystemExit(f"no experiment of the config has metrics under {results / 'metrics'}")
    summary = pd.concat([pd.read_csv(results / "metrics" / name / "summary.csv").assign(experiment=name)
                         for name in found])
    summary = summary[summary.group == "ALL"]
    rows = []
    for _, row in summary.iterrows():
        method = METHODS.get(row.method)
        learner = experiments.loc[row.experiment, "learner"]
        if method is None or (method == "stage1" and learner != "paper"):  # one ceiling: the paper's Stage I
            continue
        model = results / "models" / row.experiment / ("direct.pt" if method == "direct" else "stage2.pt")
        payload = torch.load(model, map_location="cpu", weights_only=True)
        rows.append({"learner": "stage1" if method == "stage1" else learner,
                     "subjects": int(experiments.loc[row.experiment, "subjects"]), "experiment": row.experiment,
                     **{k: row.get(k, np.nan) for k in SCORES}, "selected_step": row.get("selected_step", np.nan),
                     "val_psnr_one_missing": validation_psnr(payload, method)})
    return pd.DataFrame(rows).sort_values(["learner", "subjects"], ignore_index=True)


def gap_trend(table: pd.DataFrame) -> dict:
    """The direct regressor's test PSNR minus CodeBrain's (paper) per subject count, the least-squares line through
    the gaps against log10(subjects), and the subject count where that line reaches zero (None if it does not
    narrow)."""
    paper = table[table.learner == "paper"].set_index("subjects").psnr
    direct = table[table.learner == "direct"].set_index("subjects").psnr
    gaps = (direct - paper).dropna()
    result = {"gaps": {int(n): float(g) for n, g in gaps.items()}, "slope_per_decade": None, "crossing": None}
    if len(gaps) >= 2:
        slope, intercept = np.polyfit(np.log10(gaps.index.to_numpy(float)), gaps.to_numpy(), 1)
        result["slope_per_decade"] = float(slope)
        if slope < 0 and gaps.iloc[-1] > 0:
            result["crossing"] = float(10 ** (-intercept / slope))
    return result


LABELS = {"paper": "CodeBrain, paper", "tuned": "CodeBrain, tuned", "release": "CodeBrain, release",
          "direct": "direct regressor", "stage1": "Stage I ceiling (paper)"}


def markdown(table: pd.DataFrame, trend: dict) -> str:
    lines = ["| learner | subjects | test ALL PSNR / SSIM (2D) | BraSyn 3D SSIM tumour / outside / PSNR brain | "
             "val PSNR (one missing) | best step |", "| --- | --- | --- | --- | --- | --- |"]
    for _, row in table.iterrows():
        lines.append(f"| {LABELS.get(row.learner, row.learner)} | {row.subjects} | {row.psnr:.2f} / {row.ssim:.2f} | "
                     f"{row.ssim_tumour_3d:.2f} / {row.ssim_outside_3d:.2f} / {row.psnr_brain_3d:.2f} | "
                     f"{row.val_psnr_one_missing:.2f} | {row.selected_step:.0f} |")
    gaps = ", ".join(f"{g:+.2f} dB at {n}" for n, g in trend["gaps"].items())
    text = f"\nDirect regressor minus CodeBrain (paper), test ALL PSNR: {gaps}."
    if trend["slope_per_decade"] is not None:
        text += f" A line through them against log(subjects): {trend['slope_per_decade']:+.2f} dB per tenfold"
        text += (f", reaching zero near {trend['crossing']:.0f} subjects." if trend["crossing"] is not None
                 else "; it does not narrow.")
    return "\n".join(lines) + text + "\n"


def figure(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("psnr", "test ALL PSNR, 2D (dB)"), ("ssim", "test ALL SSIM x 100, 2D"),
              ("ssim_tumour_3d", "BraSyn 3D SSIM x 100, tumour"), ("psnr_brain_3d", "BraSyn 3D PSNR, brain (dB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        for learner, rows in table.groupby("learner"):
            ax.plot(rows.subjects, rows[key], ":" if learner == "stage1" else "-", marker="o", markersize=4,
                    label=LABELS.get(learner, learner))
        ax.set_xscale("log")
        subjects = sorted(table.subjects.unique())
        ax.set_xticks(subjects, [str(n) for n in subjects])
        ax.minorticks_off()
        ax.set_xlabel("training subjects")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", nargs="+", required=True, type=Path, help="the run's config files, in order")
    parser.add_argument("--out", type=Path, help="the figure (PNG); default <results>/metrics/subject_count.png")
    parser.add_argument("--earlier", type=Path, help="an earlier run's subject_count.csv: its rows of experiments "
                                                      "not evaluated in this run are kept")
    args = parser.parse_args(argv)
    config = merged_config(args.configfile)
    results = Path(config.get("results", "results")) / config["dataset"]["name"]
    table = study_table(results, config)
    if args.earlier:
        earlier = pd.read_csv(args.earlier)
        table = pd.concat([earlier[~earlier.experiment.isin(table.experiment)], table]).sort_values(
            ["learner", "subjects"], ignore_index=True)
    trend = gap_trend(table)
    table.to_csv(results / "metrics" / "subject_count.csv", index=False, float_format="%.4f")
    figure(table, args.out or results / "metrics" / "subject_count.png",
           f"{config['dataset']['name']}: test scores against training subjects (equal training FLOPs)")
    text = markdown(table, trend)
    (results / "metrics" / "subject_count.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
