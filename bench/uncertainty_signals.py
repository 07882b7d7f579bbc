"""Which voxel-wise signal of a CodeBrain Stage II model tracks its imputation error (issue 16, outside CI).

    python bench/uncertainty_signals.py results/brats2018-sample/models/codebrain/stage2.pt \
        results/brats2018-sample/slices --split val --out bench/results/uncertainty-signals-val.csv

For every (scenario, target) of the split, the hard imputation's absolute error inside the brain against:
  std          the shipped map: std of K decodings of codes drawn from E_prior's level distributions
  std_T2       the same, the distributions sharpened or flattened by dividing the logits by 2 (temperature)
  dev_hard     mean |sample - hard image|: the error the model itself expects of the image it returns
  flip_std     std of the hard imputation over the input flipped in x, y, both (test-time augmentation)
  given_prior  mean over the given contrasts of |D_a(E_prior's code of it) - it|: the prior's miss where it is
               checked (E_prior predicts every contrast's code, the given ones too)
  given_stage1 the same with Stage I's own codes of the given contrasts (how well the codes hold this anatomy)
Spearman's rho and the top-decile error ratio come from codebrain.evaluation.uncertainty.calibration, as in
metrics/<experiment>/uncertainty.csv. Prints the per-signal summary (pairs with rho > 0, min, mean) and writes the
per-pair table. Choose on validation; the test split is for the figure one reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from codebrain.rebuild import load_codebrain
from codebrain.data.dataset import open_store
from codebrain.evaluation.scenarios import all_scenarios, brain_masks, scenario_name
from codebrain.evaluation.uncertainty import calibration, prior_outputs
from codebrain.models.grading import sample_levels

FLIPS = [(-1,), (-2,), (-1, -2)]


def hard_imputation(stage1, prior, image, available):
    """(F_c, E_prior's logits, its hard codes) for the given contrasts of image (B x N x S x S)."""
    _, common, logits = prior_outputs(stage1, prior, image, available)
    return common, logits, prior.predict(logits)


@torch.no_grad()
def signals(stage1, prior, block: np.ndarray, available: np.ndarray, samples: int, seed: int) -> dict:
    """{target: {"error": B x S x S, signal: B x S x S}} for the missing contrasts of one scenario."""
    image = torch.from_numpy(block)

    def decode(codes, common, t):
        return stage1.decode_code(codes, common, int(t), prior.decoder).clamp(0, 1)

    common, logits, codes = hard_imputation(stage1, prior, image, available)
    drawn = {temperature: sample_levels(prior.distribution(logits / temperature), samples,
                                        torch.Generator().manual_seed(seed)) for temperature in (1.0, 2.0)}
    flipped = [(dims, hard_imputation(stage1, prior, image.flip(dims), available)) for dims in FLIPS]
    own_codes = stage1.encode(image)
    given = np.flatnonzero(available)
    given_prior = torch.stack([(decode(codes, common, a) - image[:, a]).abs() for a in given]).mean(0)
    given_stage1 = torch.stack([(stage1.decode_code(own_codes, common, int(a)).clamp(0, 1) - image[:, a]).abs()
                                for a in given]).mean(0)
    out = {}
    for t in np.flatnonzero(~available):
        hard = decode(codes, common, t)
        sampled = {temperature: torch.stack([decode(c, common, t) for c in draws])  # K x B x S x S
                   for temperature, draws in drawn.items()}
        flips = torch.stack([hard] + [decode(c, f, t).flip(dims) for dims, (f, _, c) in flipped])
        out[int(t)] = {"error": (hard - image[:, t]).abs(),
                       "std": sampled[1.0].std(0, unbiased=False), "std_T2": sampled[2.0].std(0, unbiased=False),
                       "dev_hard": (sampled[1.0] - hard).abs().mean(0), "flip_std": flips.std(0, unbiased=False),
                       "given_prior": given_prior, "given_stage1": given_stage1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a CodeBrain Stage II checkpoint (stage2.pt)")
    parser.add_argument("store", type=Path, help="the slice store it was trained on")
    parser.add_argument("--split", default="val")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, help="per-pair CSV")
    args = parser.parse_args()

    stage1, prior, _ = load_codebrain(args.checkpoint)
    stage1.eval(), prior.eval()
    contrasts = stage1.cfg.contrasts
    slices, _ = open_store(args.store, args.split, contrasts)
    collected = {}
    for start in tqdm(range(0, len(slices), args.batch_size), desc="blocks"):
        block = np.array(slices[start: start + args.batch_size], dtype=np.float32)
        brain = brain_masks(block)
        for available in all_scenarios(len(contrasts)):
            for t, maps in signals(stage1, prior, block, available, args.samples, start).items():
                pair = collected.setdefault((scenario_name(available), contrasts[t]), {})
                for name, values in maps.items():
                    pair.setdefault(name, []).append(values.numpy()[brain])
    rows = []
    for (scenario, target), pair in collected.items():
        error = np.concatenate(pair.pop("error"))
        for name, values in pair.items():
            report = calibration(np.concatenate(values), error)
            rows.append({"scenario": scenario, "target": target, "signal": name, "spearman": report["spearman"],
                         "top_decile_error_ratio": report["top_decile_error_ratio"]})
    table = pd.DataFrame(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.4f")
    summary = table.groupby("signal", sort=False).agg(
        pairs=("spearman", "size"), positive=("spearman", lambda rho: int((rho > 0).sum())),
        rho_min=("spearman", "min"), rho_mean=("spearman", "mean"),
        ratio_min=("top_decile_error_ratio", "min"), ratio_mean=("top_decile_error_ratio", "mean"))
    print(summary.round(3).to_markdown())


if __name__ == "__main__":
    main()
