"""The experiments side by side: every experiment's group means (metrics/<experiment>/summary.csv) in one table,
with each method's training FLOPs and the wall time of its training jobs (metrics/summary.{csv,md})."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from codebrain.evaluation.brasyn import VOLUME_METRICS
from codebrain.evaluation.evaluate import METHOD_NAMES, METRICS
from codebrain.io import write_atomic


def training_seconds(benchmarks: list[Path]) -> float:
    """Wall seconds of a method's training jobs from their Snakemake benchmark files (the last attempt of each
    job: a resumed job counts from its resume); NaN where one is missing."""
    if not benchmarks or not all(Path(f).is_file() for f in benchmarks):
        return float("nan")
    return float(sum(pd.read_csv(f, sep="\t")["s"].iloc[-1] for f in benchmarks))


def compare_experiments(summaries: dict[str, Path], out: Path, markdown: Path,
                        benchmarks: dict[str, list[Path]] | None = None) -> str:
    """Each experiment's group means side by side (zero imputation once), as CSV at `out` and a markdown
    table at `markdown` (returned): the ablation table, with each method's training FLOPs (from its
    checkpoint) and, given `benchmarks` ({"<experiment>/<method id>": its training jobs' benchmark files}), the
    wall time of its training."""
    method_ids = {name: method for method, name in METHOD_NAMES.items()}
    frames = []
    for name, path in summaries.items():
        frame = pd.read_csv(path)
        frame.insert(0, "experiment", name)
        if benchmarks is not None:
            frame["train_wall_s"] = [training_seconds(benchmarks.get(f"{name}/{method_ids[m]}", []))
                                     for m in frame.method]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    zero = table.method == METHOD_NAMES["zero"]
    table = pd.concat([table[zero].drop_duplicates(["group", "method"]).assign(experiment="-"), table[~zero]])
    lines = ["| experiment | method | " + " | ".join(f"{g} PSNR / SSIM / MAE" for g in ("O->O", "M->O", "ALL"))
             + " | ALL 3D (BraSyn) SSIM tumour / outside / PSNR brain | training PFLOPs | training wall (min) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (experiment, method), rows in table.groupby(["experiment", "method"], sort=False):
        by_group = rows.set_index("group")
        cells = [" / ".join(f"{by_group.loc[g, k]:.2f}" for k in METRICS) for g in ("O->O", "M->O", "ALL")]
        cells.append(" / ".join(f"{by_group.loc['ALL'].get(k, np.nan):.2f}" for k in VOLUME_METRICS))
        flops, wall = (rows[k].iloc[0] if k in rows else float("nan") for k in ("train_flops", "train_wall_s"))
        cost = [f"{flops / 1e15:.4g}" if np.isfinite(flops) else "-", f"{wall / 60:.1f}" if np.isfinite(wall) else "-"]
        lines.append(f"| {experiment} | {method} | " + " | ".join(cells + cost) + " |")
    text = "\n".join(lines) + "\n"
    with write_atomic(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with write_atomic(markdown) as tmp:
        tmp.write_text(text)
    return text
