"""Parameters and multiply-accumulates of CodeBrain's networks for a config (paper: 134.56 M, 157.82 GMACs).

Counted on the meta device, so the paper-scale model costs no memory or time: torch's
FlopCounterMode counts 2 FLOPs per MAC of every convolution and matrix product.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from codebrain.models.config import ModelConfig
from codebrain.models.prior import CodePrior
from codebrain.models.reconstructor import Reconstructor


def complexity(cfg: ModelConfig, size: int = 256) -> dict[str, tuple[int, int]]:
    """{network: (parameters, MACs for one slice)} for E_posterior, E_s, D_a, E_prior, Stage I (the first three),
    Stage II (E_prior) and their total."""
    with torch.device("meta"):
        stage1, prior = Reconstructor(cfg), CodePrior(cfg)
        n = len(cfg.contrasts)
        image = torch.zeros(1, n if cfg.joint_code else 1, size, size)
        stack = torch.zeros(1, n, size, size)

        def macs(fn, *args) -> int:
            with FlopCounterMode(display=False) as counter:
                fn(*args)
            return counter.get_total_flops() // 2

        latent = stage1.posterior(image)
        common = stage1.common_features(stack)
        parts = {
            "E_posterior": (stage1.posterior, macs(stage1.posterior, image)),
            "E_s": (stage1.common, macs(stage1.common_features, stack) if stage1.common is not None else 0),
            "D_a": (stage1.decoder, macs(stage1.decoder, latent, common)),
            "E_prior": (prior, macs(prior, stack, torch.ones(1, n, dtype=torch.bool))),
        }
    table = {name: (sum(p.numel() for p in module.parameters()) if module is not None else 0, mac)
             for name, (module, mac) in parts.items()}
    def summed(names):
        return sum(table[n][0] for n in names), sum(table[n][1] for n in names)

    table["Stage I"], table["Stage II"] = summed(["E_posterior", "E_s", "D_a"]), table["E_prior"]
    table["total"] = summed(["Stage I", "Stage II"])
    return table


def format_table(table: dict[str, tuple[int, int]], size: int) -> str:
    lines = [f"{'network':<12} {'params (M)':>11} {f'GMACs @{size}':>12}"]
    lines += [f"{name:<12} {p / 1e6:>11.2f} {m / 1e9:>12.2f}" for name, (p, m) in table.items()]
    return "\n".join(lines)


def main(argv=None):
    import yaml

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="a YAML file with a model section (e.g. config/model/paper.yaml)")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    section = yaml.safe_load(open(args.config))
    section = section.get("model", section)
    print(format_table(complexity(ModelConfig.from_dict(section), args.size), args.size))


if __name__ == "__main__":
    main()
