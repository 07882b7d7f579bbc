"""bench_memory.py's live-tensor peak against the three H200 measurements of 2026-11-26 (BENCHMARKS.md), which
were made before issue 27 changed LayerNorm2d: the plain-ops LayerNorm2d is put back for this check.

    python bench/memory_h200_check.py
"""

import torch

import bench_memory
from codebrain.models.nafnet import LayerNorm2d

H200 = [("stage1", "none", 24, 78.5), ("stage2", "none", 48, 58.6), ("stage1", "blocks", 48, 23.6)]  # GiB


def plain_layer_norm(self, x):
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return self.weight[:, None, None] * ((x - mean) / torch.sqrt(var + self.eps)) + self.bias[:, None, None]


def main():
    LayerNorm2d.forward = plain_layer_norm
    cfg = bench_memory.ModelConfig.from_dict({**bench_memory.model_section("config/models/paper.yaml"),
                                              "contrasts": ["T1", "T2", "PD"]})
    for stage, recompute, batch, measured in H200:
        small, large = (bench_memory.account(stage, cfg, n, 32, True, torch.device("cpu"), recompute) for n in (1, 2))
        gib = bench_memory.live_extrapolated(small, large, 32, (1, 2), 256, batch)["total_gib"]
        print(f"{stage}, recompute {recompute}, batch {batch}: predicted {gib:.1f} GiB, H200 {measured} GiB "
              f"({100 * (gib / measured - 1):+.1f} %)")


if __name__ == "__main__":
    main()
