"""bench/bench_memory.py's saved-tensor count against a hand count: a 1x1 convolution keeps its input, SimpleGate
keeps both halves of the convolution's output (one storage, counted once), the weight is not an activation, and
what one more sample adds is separated from what a step keeps whatever the batch."""

import sys

import pytest
import torch
from torch import nn

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_memory  # noqa: E402

from codebrain.models.nafnet import SimpleGate  # noqa: E402


def test_a_convolution_and_a_gate_keep_what_a_hand_count_says():
    network = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), SimpleGate())
    counter = bench_memory.SavedTensorCount([network])
    batch, size = 3, 8
    image = torch.rand(batch, 1, size, size)
    with counter.counting():
        network(image).sum().backward()
    pixels = batch * size * size
    assert counter.peak_kinds == {"convolutions": 4 * pixels, "SimpleGate": 4 * 2 * pixels}
    assert counter.peak == 12 * pixels
    assert network[0].weight.grad is not None


def test_per_sample_and_per_step_bytes_come_apart():
    small = {"by_kind": {"convolutions": 100 + 2 * 10, "glue": 7}, "fixed_bytes": 16}
    large = {"by_kind": {"convolutions": 100 + 4 * 10, "glue": 7}, "fixed_bytes": 16}
    at = bench_memory.extrapolated(small, large, size=8, batches=(2, 4), to_size=16, to_batch=10)
    gib = bench_memory.GIB
    assert at["per_sample_gib"] * gib == pytest.approx(10 * 4)  # 10 bytes a sample at 8^2, four times the pixels
    assert at["per_step_gib"] * gib == pytest.approx(107)
    assert at["saved_gib"] * gib == pytest.approx(40 * 10 + 107)
    assert at["total_gib"] * gib == pytest.approx(40 * 10 + 107 + 16)


def test_the_tiny_models_steps_are_counted():
    cfg = bench_memory.ModelConfig.from_dict({**bench_memory.model_section("tiny"), "contrasts": ["T1", "T2", "PD"]})
    found = bench_memory.account("stage2", cfg, batch=1, size=32, bf16=False, device=torch.device("cpu"))
    assert found["peak_saved_bytes"] == sum(found["by_kind"].values()) > 0
    assert found["by_kind"]["LayerNorm2d"] > 0 and "discriminator passes" not in found["by_kind"]
    assert found["fixed_bytes"] == 16 * found["parameters"]
    h = 32 // cfg.downsampling
    inputs = 4 * 3 * 32 * 32 + 3 + cfg.n_code_maps * cfg.code_dim * h * h  # image, mask, codes: made before the step
    assert found["live_peak_bytes"] + inputs >= found["peak_saved_bytes"]


def test_the_live_peak_counts_what_the_forward_makes_alive_at_once():
    """A view is its storage, counted once; what was made before the step, by backward (the gradients) or by
    the optimiser step is not counted; a no_grad tensor the forward makes (a loss target) is."""
    mib = 2 ** 20
    before = torch.ones(mib // 4)  # 1 MiB, made before
    weight = torch.nn.Parameter(torch.ones(mib // 4))  # its gradient: 1 MiB, made by backward
    optimiser = torch.optim.SGD([weight], lr=0.1)
    with bench_memory.LivePeak() as live:
        made = torch.ones(4 * mib)  # 16 MiB
        view = made[: 2 * mib]
        del made, view
        with torch.no_grad():
            target = before * 3  # 1 MiB
        loss = ((weight * before - target) ** 2).sum()  # two 1 MiB products, kept for backward, + a scalar
        loss.backward()
        optimiser.step()
    assert live.peak == 16 * mib
    assert sorted(nbytes for _, nbytes in live.live.values()) == [4, mib]  # the loss and the target: backward freed the rest
    assert weight.grad is not None


def test_recomputation_keeps_less_at_the_live_peak():
    cfg = bench_memory.ModelConfig.from_dict({**bench_memory.model_section("tiny"), "contrasts": ["T1", "T2", "PD"]})
    peaks = {mode: bench_memory.account("stage1", cfg, batch=2, size=64, bf16=False, device=torch.device("cpu"),
                                        recompute=mode)["live_peak_bytes"] for mode in ("none", "elementwise", "expansions", "blocks")}
    assert peaks["none"] > peaks["elementwise"] > peaks["expansions"] > peaks["blocks"]


def test_a_bf16_residual_stream_shrinks_what_checkpoints_keep_of_block_inputs():
    """Under bf16 autocast a checkpointed block keeps its input: fp32 with the fp32 residual scales, bf16 with
    bf16_residual. The saved-tensor count outside the blocks is those inputs, so it drops; the live peak too."""
    cfg = bench_memory.ModelConfig.from_dict({**bench_memory.model_section("tiny"), "contrasts": ["T1", "T2", "PD"]})
    found = {on: bench_memory.account("stage1", cfg, batch=2, size=32, bf16=True, device=torch.device("cpu"),
                                      recompute="blocks", bf16_residual=on) for on in (False, True)}
    inputs = {on: found[on]["by_kind"]["NAFBlock products"] for on in found}
    assert inputs[True] < inputs[False]  # the tiny model: most block inputs follow a bf16 convolution already
    assert found[True]["live_peak_bytes"] < found[False]["live_peak_bytes"]
