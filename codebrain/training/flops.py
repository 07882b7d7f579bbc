"""The training FLOPs the loop reports (`train/flops`) and the equal-compute studies compare: counted on a step's
forward passes in one process, summed over processes where the loop syncs."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def counting_flops(work, *args, passes: int = 3) -> tuple[object, int]:
    """(what work returns, its FLOPs in this process): `passes` x the forward FLOPs (convolutions and matrix
    products, 2 per multiply-accumulate) of every network pass in it: 3 for a training step, the usual estimate of
    forward + backward, 1 for work without gradients. The backward is not counted itself: torch's FlopCounterMode
    counts the gradient of a grouped (depthwise) convolution as a dense one's (66x a 64-channel depthwise forward
    instead of 2x)."""
    with FlopCounterMode(display=False) as counter:
        result = work(*args)
    forward = sum(n for op, n in counter.get_flop_counts().get("Global", {}).items() if not str(op).endswith("_backward"))
    return result, passes * forward


def summed_over_processes(accelerator, flops: int) -> int:
    """FLOPs over all processes, whose batches (so flops_keys and counts) may differ: one scalar all-reduce under
    DDP, none in a single process (no device sync)."""
    if accelerator.num_processes == 1:
        return flops
    total = torch.tensor([flops], dtype=torch.float64, device=accelerator.device)
    return int(accelerator.reduce(total, "sum").item())
