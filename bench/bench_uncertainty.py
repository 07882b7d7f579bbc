"""What uncertainty sampling costs: K sampled decodings against the plain (hard) imputation and against K whole
Stage II passes (E_s, E_prior and the decoder each time), for one scenario with one missing contrast.

    python bench/bench_uncertainty.py                      # the default config's model, 64 x 64, batch 16, K = 8
    python bench/bench_uncertainty.py --size 128 --samples 4

sample_imputations runs E_s and E_prior once and the decoder K + 1 times (the hard image and K samples).
Prints a Markdown table and writes bench/uncertainty-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from codebrain.evaluation.scenarios import CodeBrainImputer
from codebrain.evaluation.uncertainty import sample_imputations
from codebrain.models.config import ModelConfig
from codebrain.models.prior import CodePrior
from codebrain.models.reconstructor import Reconstructor

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def timed(function, repeats: int, warmup: int = 2) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    contrasts = config["dataset"]["contrasts"]
    cfg = ModelConfig(contrasts=contrasts, **config["experiments"]["codebrain"]["model"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    stage1, prior = Reconstructor(cfg).to(device).eval(), CodePrior(cfg).to(device).eval()
    image = torch.rand(args.batch, len(contrasts), args.size, args.size, device=device)
    available = np.ones(len(contrasts), bool)
    available[-1] = False  # one missing contrast
    imputer = CodeBrainImputer(stage1, prior, reconstruct=False)

    with torch.no_grad():
        hard = timed(lambda: imputer(image, available), args.repeats)
        sampled = timed(lambda: sample_imputations(stage1, prior, image, available, args.samples), args.repeats)
        naive = timed(lambda: [imputer(image, available) for _ in range(args.samples)], args.repeats)
    rows = {"hard imputation (E_s, E_prior, 1 decode)": hard,
            f"{args.samples} samples + hard (E_s, E_prior once, {args.samples + 1} decodes)": sampled,
            f"{args.samples} whole Stage II passes (for comparison)": naive}
    print(f"{device}, {cfg.contrasts}, size {args.size}, batch {args.batch}\n")
    print("| imputation of one missing contrast | ms per batch | x hard |\n| --- | --- | --- |")
    for name, seconds in rows.items():
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / hard:.2f} |")
    out = Path(__file__).with_name(f"uncertainty-{device}.json")
    out.write_text(json.dumps({"device": device, "machine": platform.processor() or platform.machine(),
                               "size": args.size, "batch": args.batch, "samples": args.samples,
                               "seconds": rows}, indent=1))


if __name__ == "__main__":
    main()
