"""bf16 autocast against fp32 on the same weights and inputs: one Stage I and one Stage II step.

    python bench/check_bf16.py                        # the paper model at 256 x 256, batch 8 (a GPU)
    python bench/check_bf16.py --model tiny --size 32 # a CPU smoke run (CPU autocast to bf16)

For each stage the losses and gradients of one forward + backward (no optimiser step) are compared:
relative loss difference |l_bf16 - l_fp32| / |l_fp32| and the cosine between the two flattened
gradients, per network and with channels_last + torch.compile on top (the fastest variant of
bench_training.py must pass this check before the training rules use it). Stage I is the
generator's loss as stage1.py takes it (PSNR + quantiser + adversarial through a fixed PatchGAN);
Stage II the grading loss on codes the Stage I model gives the same slices.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext

import torch

from bench_training import gradients, model_section, stage1_loss, step_inputs
from codebrain.models.config import ModelConfig
from codebrain.models.nafnet import set_bf16_residual
from codebrain.models.patchgan import PatchDiscriminator
from codebrain.models.prior import CodePrior
from codebrain.models.reconstructor import Reconstructor

PASS = {"relative_loss_difference": 0.02, "gradient_cosine": 0.99}  # what a variant must meet


def one_step(stage: str, networks: dict, inputs: tuple, bf16: bool, fast: bool) -> tuple[float, dict]:
    """Loss and {network: flattened gradient} of one forward + backward."""
    device = inputs[0].device
    for network in networks.values():
        network.zero_grad(set_to_none=True)
        network.to(memory_format=torch.channels_last if fast else torch.contiguous_format)
    image = inputs[0].contiguous(memory_format=torch.channels_last) if fast else inputs[0]
    autocast = torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext()
    if stage == "stage1":
        loss_fn = torch.compile(stage1_loss) if fast else stage1_loss
        with autocast:
            loss = loss_fn(networks["generator"], networks["discriminator"], image, *inputs[1:])
    else:
        prior = networks["prior"]
        loss_fn = torch.compile(lambda x, mask, codes: prior.loss(prior(x, mask), codes)) if fast else (
            lambda x, mask, codes: prior.loss(prior(x, mask), codes))
        with autocast:
            loss = loss_fn(image * inputs[1][:, :, None, None], inputs[1], inputs[2])
    loss.backward()
    return float(loss.detach()), {name: gradients(network) for name, network in networks.items()}


def compare(stage: str, networks: dict, inputs: tuple, fast: bool) -> dict:
    reference_loss, reference_grads = one_step(stage, networks, inputs, bf16=False, fast=False)
    loss, grads = one_step(stage, networks, inputs, bf16=True, fast=fast)
    cosines = {name: float(torch.nn.functional.cosine_similarity(grads[name].double(),  # fp32 sums reach 1.007
                                                                  reference_grads[name].double(), dim=0))
               for name in grads}
    result = {"stage": stage, "variant": "bf16+channels_last+compile" if fast else "bf16",
              "fp32_loss": reference_loss, "bf16_loss": loss,
              "relative_loss_difference": abs(loss - reference_loss) / abs(reference_loss),
              "gradient_cosine": cosines}
    result["passes"] = (result["relative_loss_difference"] <= PASS["relative_loss_difference"]
                        and min(cosines.values()) >= PASS["gradient_cosine"])
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="config/models/paper.yaml", help="a model YAML, or 'tiny'")
    parser.add_argument("--contrasts", nargs="+", default=["T1", "T2", "PD"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true", help="check bf16 alone (torch.compile is slow on a CPU)")
    parser.add_argument("--bf16-residual", action="store_true",
                        help="NAFBlocks' residual stream in bf16 in the bf16 steps (fp32 is unchanged by it)")
    parser.add_argument("--scales", type=float, default=0.0, metavar="S",
                        help="draw every NAFBlock's residual scales from U(-S, S): a fresh block's are zero, so its "
                             "branches add nothing to the residual stream and a check at 0 does not exercise it")
    parser.add_argument("--out", default="bench/bf16-check.json")
    args = parser.parse_args(argv)
    cfg = ModelConfig.from_dict({**model_section(args.model), "contrasts": args.contrasts})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    image, mask, anchor = step_inputs("stage1", cfg, args.batch, args.size, device)
    generator = Reconstructor(cfg).to(device)
    discriminator = PatchDiscriminator(1, cfg.disc_width, cfg.disc_layers).to(device)
    with torch.no_grad():
        codes = generator.encode(image)  # Stage II's targets: the codes this Stage I gives the slices
    prior = CodePrior(cfg).to(device)
    for network in (generator, discriminator, prior):
        set_bf16_residual(network, args.bf16_residual)
        with torch.no_grad():
            for name, parameter in network.named_parameters():
                if name.endswith(("beta", "gamma")):
                    parameter.uniform_(-args.scales, args.scales)
    variants = [False] if args.no_compile else [False, True]
    results = [compare("stage1", {"generator": generator, "discriminator": discriminator}, (image, mask, anchor), fast)
               for fast in variants]
    results += [compare("stage2", {"prior": prior}, (image, mask, codes), fast) for fast in variants]
    for r in results:
        cosine = min(r["gradient_cosine"].values())
        print(f"{r['stage']:<7} {r['variant']:<28} loss fp32 {r['fp32_loss']:.5f} bf16 {r['bf16_loss']:.5f} "
              f"rel. diff {r['relative_loss_difference']:.2e}  min grad cosine {cosine:.5f}  "
              f"{'passes' if r['passes'] else 'FAILS'}", flush=True)
    record = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "model": args.model, "size": args.size, "batch": args.batch, "bf16_residual": args.bf16_residual, "scales": args.scales,
              "thresholds": PASS, "results": results}
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
