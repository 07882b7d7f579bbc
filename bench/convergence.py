"""Validation PSNR against training FLOPs for CodeBrain's Stage I (its ceiling: decoding each target's own code),
Stage II (imputation; its FLOPs include Stage I's) and the direct regressor, from a finished run's MLflow store.

    python bench/convergence.py results/brats2018-sample --out docs/figures/convergence-brats2018-sample.png

Reads the training runs (tags rule = train_stage1 / train_stage2 / train_direct, one per experiment) of the
dataset's MLflow experiment, takes each validation's one-missing and all-scenario PSNR, places it at the run's
training FLOPs at that step (interpolated in the run's logged train/flops), and writes a figure and a Markdown
table (the best validation point per method, and the last). --experiments picks the experiments to show;
--stage1-of NAME=OTHER credits a Stage II trained on another experiment's Stage I (by hand) with that one's FLOPs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def histories(client, run_id: str, keys: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for key in keys:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        out[key] = (np.array([p[0] for p in points], float), np.array([p[1] for p in points], float))
    return out


def curves(tracking_uri: str, dataset: str, stage1_of: dict[str, str] | None = None
           ) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """{(experiment, method): {"flops", "psnr_one_missing", "psnr"}} from the latest run of each training rule."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(dataset)
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    latest = {}
    for run in runs:
        key = (run.data.tags.get("experiment"), run.data.tags.get("rule"))
        if key[1] in ("train_stage1", "train_stage2", "train_direct") and key not in latest:
            latest[key] = run
    stage1_flops = {name: run.data.metrics["train/flops"] for (name, rule), run in latest.items() if rule == "train_stage1"}
    method_of = {"train_stage1": "stage1", "train_stage2": "stage2", "train_direct": "direct"}
    result = {}
    for (name, rule), run in latest.items():
        method = method_of[rule]
        found = histories(client, run.info.run_id, ["train/flops", f"val/psnr_{method}_one_missing", f"val/psnr_{method}"])
        flop_steps, flops = found["train/flops"]
        steps, one_missing = found[f"val/psnr_{method}_one_missing"]
        stage1_name = (stage1_of or {}).get(name, name)
        offset = stage1_flops.get(stage1_name, 0.0) if method == "stage2" else 0.0  # Stage II stands on Stage I's
        result[(name, method)] = {"flops": offset + np.interp(steps, flop_steps, flops), "steps": steps,
                                  "psnr_one_missing": one_missing, "psnr": found[f"val/psnr_{method}"][1]}
    return result


LABELS = {"stage1": "Stage I (own code: ceiling)", "stage2": "CodeBrain (Stage II)", "direct": "direct regressor"}


def figure(found: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    styles = {"stage1": ":", "stage2": "-", "direct": "--"}
    for (name, method), curve in sorted(found.items()):
        ax.plot(curve["flops"] / 1e15, curve["psnr"], styles[method], marker="o", markersize=3,
                label=f"{name}: {LABELS[method]}")
    ax.set_xlabel("training PFLOPs (CodeBrain Stage II: Stage I's included)")
    ax.set_ylabel("validation PSNR, all scenarios (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(found: dict) -> str:
    lines = ["| experiment | method | PFLOPs at the end | val PSNR at the end | best val PSNR (one missing) | at PFLOPs |",
             "| --- | --- | --- | --- | --- | --- |"]
    for (name, method), curve in sorted(found.items()):
        best = int(np.argmax(curve["psnr_one_missing"]))
        lines.append(f"| {name} | {LABELS[method]} | {curve['flops'][-1] / 1e15:.4g} | {curve['psnr'][-1]:.2f} | "
                     f"{curve['psnr_one_missing'][best]:.2f} | {curve['flops'][best] / 1e15:.4g} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="a dataset's results folder, e.g. results/brats2018-sample")
    parser.add_argument("--tracking-uri", help="default: sqlite:///<results>/../mlflow.db")
    parser.add_argument("--out", required=True, help="the figure (PNG)")
    parser.add_argument("--experiments", nargs="+", help="the experiments to show (default: all)")
    parser.add_argument("--stage1-of", nargs="+", default=[], metavar="NAME=OTHER",
                        help="experiment NAME's Stage II was trained on experiment OTHER's Stage I")
    args = parser.parse_args(argv)
    results = Path(args.results)
    uri = args.tracking_uri or f"sqlite:///{(results.parent / 'mlflow.db').resolve()}"
    found = curves(uri, results.name, dict(pair.split("=", 1) for pair in args.stage1_of))
    if args.experiments:
        found = {key: curve for key, curve in found.items() if key[0] in args.experiments}
    figure(found, Path(args.out), f"{results.name}: validation PSNR against training compute")
    print(table(found))


if __name__ == "__main__":
    main()
