"""Bytes each network's training step keeps for backward, per sample, by module kind (issue 27, item 1):

    python bench/bench_memory.py                                  # paper model, 32 x 32, batch 2, CPU bf16
    python bench/bench_memory.py --model tiny --size 32 --batch 2 --out bench/memory-tiny.json

Each step is bench_training.py's (Stage I: generator, the discriminator on [real; fake] and the adversarial
term; Stage II: E_prior with the grading loss) or the direct regressor's, run once under
torch.autograd.graph.saved_tensors_hooks. Every tensor autograd saves is counted once per storage (a view saved
twice is one buffer; a parameter is a weight, not an activation), while it is alive, and charged to the
innermost module kind that saved it: LayerNorm2d, SimpleGate, channel attention, convolutions, the rest of a
NAFBlock (x times its channel attention, the residual scales), the discriminator's passes, FSQ, and glue (losses, masking). The peak of the
live sum is what backward needs at once. The step runs at batches B and 2B: their difference is what a sample
adds, which scales with pixels to --extrapolate SIZE BATCH; the rest is per step (autocast's bf16 copies of the
weights); weights, gradients and Adam's two moments (fp32, 16 bytes a parameter) are added whole. bf16 runs under the device's autocast: the CPU's op lists differ from
CUDA's (CUDA computes pow, sum and softmax in fp32; the CPU in bf16), so on the CPU the count is a lower bound
for those ops; on a GPU (--device cuda) it counts what CUDA keeps.

Each step runs under every NAFBlock recompute mode (--recompute; codebrain.models.nafnet.set_recompute). The
saved-tensor hooks do not see inside a checkpoint (it keeps its tensors under hooks of its own), so for
"elementwise" and "blocks" the per-kind columns are what is kept outside the blocks; the live-tensor peak
(LivePeak: every tensor the step makes, alive at once, checked after each op) is what compares the modes,
gradients and backward's transients included.
"""

from __future__ import annotations

import argparse
import json
import weakref
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from bench_training import Stage1Step, Stage2Step, model_section, step_inputs
from codebrain.models.config import ModelConfig
from codebrain.models.direct import DirectRegressor
from codebrain.models.fsq import FSQ
from codebrain.models.losses import psnr_loss
from codebrain.models.nafnet import RECOMPUTE, LayerNorm2d, NAFBlock, SimpleGate, set_bf16_residual, set_recompute
from codebrain.models.patchgan import PatchDiscriminator, ReleaseDiscriminator

GIB = 2 ** 30


class DirectStep:
    def __init__(self, cfg: ModelConfig, options: set, device):
        self.model = DirectRegressor(cfg).to(device)
        self.networks = [self.model]
        self.optimisers = [torch.optim.Adam(self.model.parameters(), lr=1e-4)]

    def __call__(self, image, mask, _):
        loss = psnr_loss(self.model(image * mask[:, :, None, None], mask), image)
        self.optimisers[0].zero_grad(set_to_none=True)
        loss.backward()
        self.optimisers[0].step()


STEPS = {"stage1": Stage1Step, "stage2": Stage2Step, "direct": DirectStep}


class SavedTensorCount:
    """The live bytes autograd keeps for backward, per module kind, and their peak."""

    def __init__(self, networks: list[nn.Module]):
        self.weights = {p.untyped_storage().data_ptr() for net in networks for p in net.parameters()}
        self.live = {}  # storage pointer -> (weak reference to a tensor on it, bytes, kind)
        self.stack: list[nn.Module] = []
        self.attention = {id(m.sca) for net in networks for m in net.modules() if isinstance(m, NAFBlock)}
        self.discriminators = {id(m) for net in networks for m in net.modules() if isinstance(m, (PatchDiscriminator, ReleaseDiscriminator))}
        self.peak, self.peak_kinds = 0, {}
        self.handles = [h for net in networks for m in net.modules()
                        for h in (m.register_forward_pre_hook(self.enter), m.register_forward_hook(self.leave))]

    def enter(self, module, _):
        self.stack.append(module)

    def leave(self, module, _, __):
        self.stack.pop()

    def kind(self) -> str:
        if any(id(m) in self.discriminators for m in self.stack):
            return "discriminator passes"
        for module in reversed(self.stack):
            if isinstance(module, LayerNorm2d):
                return "LayerNorm2d"
            if isinstance(module, SimpleGate):
                return "SimpleGate"
            if id(module) in self.attention:
                return "channel attention"
            if isinstance(module, FSQ):
                return "FSQ"
            if isinstance(module, nn.Conv2d):
                return "convolutions"
            if isinstance(module, NAFBlock):
                return "NAFBlock products"
        return "glue (losses, masking, code maps)"

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.weights and pointer not in self.live:
            self.live[pointer] = (weakref.ref(tensor), storage.nbytes(), self.kind())
            self.live = {p: entry for p, entry in self.live.items() if entry[0]() is not None}
            total = sum(entry[1] for entry in self.live.values())
            if total > self.peak:
                kinds = defaultdict(int)
                for _, nbytes, kind in self.live.values():
                    kinds[kind] += nbytes
                self.peak, self.peak_kinds = total, dict(kinds)
        return tensor

    @contextmanager
    def counting(self):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
            yield
        for handle in self.handles:
            handle.remove()


class LivePeak(TorchDispatchMode):
    """The most bytes alive at once of the tensors the forward passes make (and the recomputation inside
    backward), each storage once, checked after every op. That is what grows with the batch. What backward
    makes (the gradients) and what the optimiser step makes are not counted: their parameter-sized tensors
    dominate a small batch's peak and are added whole instead (weights, gradients, Adam's moments: 16 bytes a
    parameter); backward's in-flight activation gradients are the part of a true peak this leaves out. Unlike
    the saved-tensor count it sees what a checkpoint keeps under its own hooks; unlike an allocator's count it
    is exact at any size."""

    def __enter__(self):
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}  # data pointer -> (storage, bytes)
        self.peak, self.optimising = 0, False
        self.hooks = [register_optimizer_step_pre_hook(lambda *_: self.optimise(True)),
                      register_optimizer_step_post_hook(lambda *_: self.optimise(False))]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def optimise(self, started: bool) -> None:
        self.optimising = started

    def forward_pass(self) -> bool:
        in_backward = torch._C._current_graph_task_id() != -1
        return not self.optimising and (not in_backward or torch.is_grad_enabled())  # recomputation records

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.forward_pass():
            return out
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                known = self.live.get(storage.data_ptr())
                if known is None or known[0].expired():  # a new storage (perhaps at a freed one's address)
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        self.live = {pointer: entry for pointer, entry in self.live.items() if not entry[0].expired()}
        self.peak = max(self.peak, sum(nbytes for _, nbytes in self.live.values()))
        return out


def account(stage: str, cfg: ModelConfig, batch: int, size: int, bf16: bool, device, recompute: str = "none",
            bf16_residual: bool = False) -> dict:
    """One training step's saved-tensor peak (bytes, by kind), its fixed bytes (weights, gradients, Adam) and
    the peak of the tensors it makes (after one unmeasured step, so that Adam's moments exist)."""
    torch.manual_seed(0)
    step = STEPS[stage](cfg, set(), device)
    for network in step.networks:
        set_recompute(network, recompute)
        set_bf16_residual(network, bf16_residual)
    image, mask, extra = step_inputs(stage, cfg, batch, size, device)
    autocast = (lambda: torch.autocast(device.type, torch.bfloat16)) if bf16 else nullcontext
    with autocast():
        step(image, mask, extra)
    counter, made = SavedTensorCount(step.networks), LivePeak()
    with counter.counting(), autocast(), made:
        step(image, mask, extra)
    parameters = sum(p.numel() for net in step.networks for p in net.parameters())
    return {"peak_saved_bytes": counter.peak, "by_kind": counter.peak_kinds, "parameters": parameters,
            "fixed_bytes": 16 * parameters,  # fp32 weights, gradients and Adam's two moments
            "live_peak_bytes": made.peak, "recompute": recompute, "bf16_residual": bf16_residual}


def two_point(small_bytes: float, large_bytes: float, batches: tuple[int, int]) -> tuple[float, float]:
    """(bytes one more sample adds, bytes a step keeps whatever its batch) from the counts at two batch sizes."""
    per_sample = (large_bytes - small_bytes) / (batches[1] - batches[0])
    return per_sample, small_bytes - batches[0] * per_sample


def extrapolated(small: dict, large: dict, size: int, batches: tuple[int, int], to_size: int, to_batch: int) -> dict:
    """Per-sample bytes from the difference of two batch sizes (what one more sample adds), scaled by pixels; the
    rest (autocast's bf16 copies of the weights, per-step buffers) is per step, and stays as it is."""
    scale = (to_size / size) ** 2
    kinds = set(small["by_kind"]) | set(large["by_kind"])
    split = {k: two_point(small["by_kind"].get(k, 0), large["by_kind"].get(k, 0), batches) for k in kinds}
    per_sample = {k: split[k][0] for k in kinds}
    per_step = {k: split[k][1] for k in kinds}
    by_kind = {k: (per_sample[k] * scale * to_batch + per_step[k]) / GIB for k in kinds}
    saved = sum(by_kind.values())
    return {"size": to_size, "batch": to_batch, "saved_gib": saved, "by_kind_gib": by_kind,
            "per_sample_gib": sum(per_sample.values()) * scale / GIB, "per_step_gib": sum(per_step.values()) / GIB,
            "total_gib": saved + small["fixed_bytes"] / GIB}


def live_extrapolated(small: dict, large: dict, size: int, batches: tuple[int, int], to_size: int,
                      to_batch: int) -> dict:
    """The live-tensor peak the same way: what one more sample adds, scaled by pixels, plus the per-step rest,
    plus the weights, gradients and Adam's moments made before the step (16 bytes a parameter)."""
    per_sample, per_step = two_point(small["live_peak_bytes"], large["live_peak_bytes"], batches)
    return {"per_sample_gib": per_sample * (to_size / size) ** 2 / GIB, "per_step_gib": per_step / GIB,
            "total_gib": (per_sample * (to_size / size) ** 2 * to_batch + per_step + small["fixed_bytes"]) / GIB}


def table(results: dict) -> str:
    kinds = sorted({k for r in results.values() for k in r["at"]["by_kind_gib"]})
    lines = ["| stage, recompute | " + " | ".join(kinds)
             + " | saved | + weights, grads, Adam | per sample | per step | live peak, predicted |",
             "| --- " * (len(kinds) + 6) + "|"]
    for stage, r in results.items():
        at = r["at"]
        cells = [f"{at['by_kind_gib'].get(k, 0):.2f}" for k in kinds]
        lines.append(f"| {stage} (batch {at['batch']}, {at['size']}^2) | " + " | ".join(cells)
                     + f" | {at['saved_gib']:.1f} | {at['total_gib']:.1f} | {at['per_sample_gib']:.2f} |"
                     f" {at['per_step_gib']:.2f} | {r['live']['total_gib']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="config/models/paper.yaml", help="a model YAML, or 'tiny'")
    parser.add_argument("--contrasts", nargs="+", default=["T1", "T2", "PD"])
    parser.add_argument("--stages", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--extrapolate", nargs=2, type=int, default=[256, 48], metavar=("SIZE", "BATCH"))
    parser.add_argument("--recompute", nargs="+", default=list(RECOMPUTE), choices=RECOMPUTE,
                        help="NAFBlock recompute modes to measure (codebrain.models.nafnet.set_recompute)")
    parser.add_argument("--bf16-residual", action="store_true",
                        help="NAFBlocks' residual stream in bf16 (codebrain.models.nafnet.set_bf16_residual)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="JSON of the counts")
    args = parser.parse_args(argv)
    cfg = ModelConfig.from_dict({**model_section(args.model), "contrasts": args.contrasts})
    device = torch.device(args.device)
    results = {}
    batches = (args.batch, 2 * args.batch)
    for stage in args.stages:
        for recompute in args.recompute:
            small, large = (account(stage, cfg, b, args.size, not args.fp32, device, recompute, args.bf16_residual)
                            for b in batches)
            results[f"{stage}, {recompute}"] = {
                "measured": {str(b): found for b, found in zip(batches, (small, large))}, "size": args.size,
                "at": extrapolated(small, large, args.size, batches, *args.extrapolate),
                "live": live_extrapolated(small, large, args.size, batches, *args.extrapolate)}
            print(f"{stage}, {recompute}: live peak {results[f'{stage}, {recompute}']['live']['total_gib']:.1f}"
                  " GiB predicted", flush=True)
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
