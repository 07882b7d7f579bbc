"""Training-step speed of CodeBrain's two stages per variant: samples/s, achieved TFLOP/s, peak memory.

    python bench/bench_training.py                                   # paper size: 256 x 256, batch 48 (a GPU)
    python bench/bench_training.py --size 64 --batch 8 --model tiny  # a CPU smoke run

Stage I is one generator step as codebrain/training/stage1.py takes it (E_posterior, FSQ, E_s,
D_a, PSNR loss, PatchGAN on [real; fake] and the adversarial term); Stage II is E_prior with the
grading loss on codes. TFLOP/s counts the forward FLOPs (torch's FlopCounterMode) times 3 for
forward + backward. Variants add up left to right: fp32, bf16 autocast, channels_last,
torch.compile, fused Adam; "regional_compile" compiles each NAFBlock instead (nafnet.compile_blocks),
"cuda_graphs" the same in mode reduce-overhead; "checkpointing" is bf16 + channels_last with every NAFBlock recomputed in
backward (`recompute: blocks`), "elementwise" the same keeping the dense convolutions' outputs
(`recompute: elementwise`), "expansions" keeping only the expanding ones' (`recompute: expansions`): memory for time;
"bf16_residual" keeps NAFBlocks' residual stream in bf16 (`bf16_residual: true`). The numerical check (--check-batch) compares each variant's generator
gradient with the same precision's eager path. Writes bench/training-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from codebrain.models.config import ModelConfig
from codebrain.models.losses import psnr_loss
from codebrain.models.nafnet import compile_blocks, set_bf16_residual, set_recompute
from codebrain.models.patchgan import PatchDiscriminator, adversarial_loss
from codebrain.models.prior import CodePrior
from codebrain.models.reconstructor import Reconstructor

TINY = {"width": 8, "enc_blocks": [1, 1], "dec_blocks": [1, 1], "middle_blocks": 1, "prior_width": 8,
        "prior_enc_blocks": [1, 1], "prior_middle_blocks": 1, "disc_width": 8}
VARIANTS = {
    "fp32": set(),
    "bf16": {"bf16"},
    "bf16+channels_last": {"bf16", "channels_last"},
    "bf16+channels_last+compile": {"bf16", "channels_last", "compile"},
    "bf16+channels_last+compile+fused_adam": {"bf16", "channels_last", "compile", "fused_adam"},
    "bf16+channels_last+checkpointing": {"bf16", "channels_last", "checkpointing"},
    "bf16+channels_last+elementwise": {"bf16", "channels_last", "elementwise"},
    "bf16+channels_last+expansions": {"bf16", "channels_last", "expansions"},
    "bf16+channels_last+expansions+bf16_residual": {"bf16", "channels_last", "expansions", "bf16_residual"},
    "fp32+regional_compile": {"regional_compile"},
    "bf16+channels_last+elementwise+regional_compile": {"bf16", "channels_last", "elementwise", "regional_compile"},
    "bf16+channels_last+elementwise+cuda_graphs": {"bf16", "channels_last", "elementwise", "cuda_graphs"},
}
GPU_ONLY = {"bf16", "compile", "fused_adam", "cuda_graphs"}  # on the CPU: fp32 only, eager or regional compile
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}  # gradient vs the same precision's eager path, relative (our bounds)


def reconstruction_loss(model, image, mask, anchor):
    """(reconstruction, target, PSNR + quantiser loss) of Stage I's generator."""
    reconstruction, _, quantiser_loss = model(image, mask, anchor)
    target = image[torch.arange(len(image), device=image.device), anchor][:, None]
    return reconstruction, target, psnr_loss(reconstruction, target) + quantiser_loss


def stage1_loss(model, disc, image, mask, anchor):
    """The generator's loss as stage1.py takes it: PSNR + quantiser + adversarial through D."""
    reconstruction, _, loss = reconstruction_loss(model, image, mask, anchor)
    return loss + adversarial_loss(disc(reconstruction), True)


def gradients(network: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.float().flatten() for p in network.parameters() if p.grad is not None])


class Stage1Step:
    def __init__(self, cfg: ModelConfig, options: set, device):
        self.model = Reconstructor(cfg).to(device)
        self.disc = PatchDiscriminator(1, cfg.disc_width, cfg.disc_layers).to(device)
        self.networks = [self.model, self.disc]
        self.optimisers = [torch.optim.Adam(m.parameters(), lr=1e-4, fused="fused_adam" in options)
                           for m in self.networks]

    def generator_loss(self, image, mask, anchor):
        """The loss the numerical check differentiates."""
        return stage1_loss(self.model, self.disc, image, mask, anchor)

    def __call__(self, image, mask, anchor):
        opt_g, opt_d = self.optimisers
        reconstruction, target, loss = reconstruction_loss(self.model, image, mask, anchor)
        logits = self.disc(torch.cat([target, reconstruction.detach()]))
        real, fake = logits.chunk(2)
        disc_loss = 0.5 * (adversarial_loss(real, True) + adversarial_loss(fake, False))
        opt_d.zero_grad(set_to_none=True)
        disc_loss.backward()
        opt_d.step()
        loss = loss + adversarial_loss(self.disc(reconstruction), True)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()


class Stage2Step:
    def __init__(self, cfg: ModelConfig, options: set, device):
        self.prior = CodePrior(cfg).to(device)
        self.networks = [self.prior]
        self.optimisers = [torch.optim.Adam(self.prior.parameters(), lr=1e-4, fused="fused_adam" in options)]

    def generator_loss(self, image, mask, codes):
        return self.prior.loss(self.prior(image * mask[:, :, None, None], mask), codes)

    def __call__(self, image, mask, codes):
        loss = self.generator_loss(image, mask, codes)
        self.optimisers[0].zero_grad(set_to_none=True)
        loss.backward()
        self.optimisers[0].step()


def model_section(model: str) -> dict:
    """The model keys of a model YAML (its `model:` section, as config/models/paper.yaml has), or TINY for 'tiny'."""
    section = TINY if model == "tiny" else yaml.safe_load(open(model))
    return section.get("model", section)


def forward_flops(stage: str, cfg: ModelConfig, batch: int, size: int) -> int:
    """FLOPs of one step's forward passes: counted for one sample on the CPU (FSQ's autocast guard has no
    meta-device form), times the batch (every layer is per-sample)."""
    n = len(cfg.contrasts)
    image, mask = torch.zeros(1, n, size, size), torch.ones(1, n, dtype=torch.bool)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if stage == "stage1":
            model, disc = Reconstructor(cfg), PatchDiscriminator(1, cfg.disc_width, cfg.disc_layers)
            reconstruction, _, _ = model(image, mask, torch.zeros(1, dtype=torch.long))
            disc(torch.cat([reconstruction, reconstruction]))  # D on [real; fake]
            disc(reconstruction)  # the adversarial term
        else:
            CodePrior(cfg)(image, mask)
    return counter.get_total_flops() * batch


def step_inputs(stage: str, cfg: ModelConfig, batch: int, size: int, device):
    """Random slices, a scenario mask with the first contrast available, and Stage II's codes or Stage I's (and
    the regressor's) anchor contrast."""
    n = len(cfg.contrasts)
    image = torch.rand(batch, n, size, size, device=device)
    mask = torch.rand(batch, n, device=device) > 0.5
    mask[:, 0] = True
    if stage == "stage2":
        h = size // cfg.downsampling
        levels = torch.tensor(cfg.levels, device=device)[None, None, :, None, None]
        extra = (torch.rand(batch, cfg.n_code_maps, cfg.code_dim, h, h, device=device) * levels).to(torch.uint8)
    else:
        extra = torch.randint(0, n, (batch,), device=device)
    return image, mask, extra


def built(stage: str, cfg: ModelConfig, options: set, batch: int, size: int, device):
    """A variant's step (seeded: every variant starts from the same weights) and its inputs."""
    torch.manual_seed(0)
    step = (Stage1Step if stage == "stage1" else Stage2Step)(cfg, options, device)
    layout = torch.channels_last if "channels_last" in options else torch.contiguous_format
    for network in step.networks:
        network.to(memory_format=layout)
        if "checkpointing" in options:
            set_recompute(network, "blocks")
        for recompute in ("elementwise", "expansions"):
            if recompute in options:
                set_recompute(network, recompute)
        set_bf16_residual(network, "bf16_residual" in options)
        if options & {"regional_compile", "cuda_graphs"}:
            compile_blocks(network, mode="reduce-overhead" if "cuda_graphs" in options else None)
    image, mask, extra = step_inputs(stage, cfg, batch, size, device)
    return step, (image.contiguous(memory_format=layout), mask, extra)


def gradient_difference(stage: str, cfg: ModelConfig, options: set, batch: int, size: int, device) -> float:
    """The numerical check: the first network's gradient of the generator loss under the variant against the
    same precision's eager, contiguous path, ||g - g_eager|| / ||g_eager||."""
    grads = []
    for variant in (options, options & {"bf16"}):
        step, inputs = built(stage, cfg, variant, batch, size, device)
        with torch.autocast(device.type, torch.bfloat16) if "bf16" in variant else nullcontext():
            step.generator_loss(*inputs).backward()
        grads.append(gradients(step.networks[0]))
    return float((grads[0] - grads[1]).norm() / grads[1].norm())


def measure(stage: str, cfg: ModelConfig, options: set, batch: int, size: int, steps: int, warmup: int,
            device, profile: Path | None = None) -> dict:
    step, (image, mask, extra) = built(stage, cfg, options, batch, size, device)
    call = torch.compile(step.__call__) if "compile" in options else step.__call__
    autocast = torch.autocast(device.type, torch.bfloat16) if "bf16" in options else nullcontext()
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first = time.perf_counter()
    for i in range(warmup + steps):  # warmup >= 1: the first step (compilation, cuDNN autotuning) is never timed
        if i == warmup:
            sync()
            started = time.perf_counter()
        with autocast:
            call(image, mask, extra)
        if i == 0:
            sync()
            first_step_s = time.perf_counter() - first
    sync()
    seconds = time.perf_counter() - started
    samples_per_s = steps * batch / seconds
    if profile is not None:  # three more steps under torch.profiler: where the time goes, kernel by kernel
        from torch.profiler import ProfilerActivity, profile as profiler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profiler(activities=activities) as recorded:
            for _ in range(3):
                with autocast:
                    call(image, mask, extra)
            sync()
        sort = "cuda_time_total" if cuda else "cpu_time_total"
        with open(profile, "a") as handle:
            handle.write(f"## {stage}, {' + '.join(sorted(options)) or 'fp32'}, batch {batch}, {size} x {size}\n")
            handle.write(recorded.key_averages().table(sort_by=sort, row_limit=15) + "\n")
    flops = 3 * forward_flops(stage, cfg, batch, size) * steps / seconds
    return {"stage": stage, "samples_per_s": samples_per_s, "tflops": flops / 1e12, "first_step_s": first_step_s,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="config/models/paper.yaml", help="a model YAML, or 'tiny'")
    parser.add_argument("--contrasts", nargs="+", default=["T1", "T2", "PD"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--stages", nargs="+", default=["stage1", "stage2"], choices=["stage1", "stage2"])
    parser.add_argument("--out", help="JSON file (default: bench/training-<device>.json)")
    parser.add_argument("--profile", nargs="*", default=[], choices=list(VARIANTS),
                        help="variants to profile (top kernels, appended to --profile-out)")
    parser.add_argument("--profile-out", default="bench/profile.txt")
    parser.add_argument("--check-batch", type=int, default=2,
                        help="batch of the numerical check (each variant's gradient against eager); 0: no check")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step compiles and autotunes)")
    cfg = ModelConfig.from_dict({**model_section(args.model), "contrasts": args.contrasts})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    print(f"{'stage':<7} {'variant':<40} {'samples/s':>10} {'TFLOP/s':>8} {'peak GiB':>9}")
    for stage in args.stages:
        for name in args.variants:
            if device.type == "cpu" and VARIANTS[name] & GPU_ONLY:
                continue
            try:
                profile = Path(args.profile_out) if name in args.profile else None
                row = {"variant": name, **measure(stage, cfg, VARIANTS[name], args.batch, args.size, args.steps,
                                                  args.warmup, device, profile)}
            except torch.OutOfMemoryError:
                rows.append({"stage": stage, "variant": name, "error": "out of memory"})
                print(f"{stage:<7} {name:<40} {'out of memory':>10}", flush=True)
                torch.compiler.reset()
                torch.cuda.empty_cache()
                continue
            check = ""
            if args.check_batch:
                difference = gradient_difference(stage, cfg, VARIANTS[name], args.check_batch, args.size, device)
                precision = "bf16" if "bf16" in VARIANTS[name] else "fp32"
                row.update(grad_rel_diff=difference, check_passed=difference <= TOLERANCE[precision])
                check = f"   gradient vs eager {difference:.1e} ({'pass' if row['check_passed'] else 'FAIL'})"
            rows.append(row)
            memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
            print(f"{stage:<7} {name:<40} {row['samples_per_s']:>10.1f} {row['tflops']:>8.2f} {memory:>9}"
                  f"   first step {row['first_step_s']:.1f} s{check}", flush=True)
    record = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "model": args.model, "size": args.size, "batch": args.batch,
              "steps": args.steps, "rows": rows}
    out = Path(args.out) if args.out else Path(__file__).parent / f"training-{device.type}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
