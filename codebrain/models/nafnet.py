"""NAFNet building blocks (Chen et al. 2022), split into an encoder and a decoder.

CodeBrain's networks are all NAFNet pieces: the encoders (E_posterior, E_s, E_prior) are
NAFNet's contracting half, the decoder D_a its expanding half with additive skips. A block
is LayerNorm2d -> 1x1 -> depthwise 3x3 -> SimpleGate -> simplified channel attention -> 1x1,
then a gated feed-forward, both residual with learnt scales that start at zero (so a fresh
block is the identity).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

RECOMPUTE = ("none", "elementwise", "expansions", "blocks")


class LayerNormFunction(torch.autograd.Function):
    """Channel LayerNorm that keeps only x_hat and the variance for backward (NAFNet's own version): the plain ops
    keep x - mean, its square and x_hat, three full-resolution tensors where this keeps one. It computes in fp32
    whatever its input's dtype, as autocast runs torch's own layer_norm (a bf16 stream gets fp32 statistics)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 -> fp32; fp32 and fp64 stay
        mean = x.mean(1, keepdim=True)  # B x 1 x H x W
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + eps)  # B x C x H x W
        ctx.eps = eps
        ctx.save_for_backward(x_hat, var, weight)
        return weight[:, None, None] * x_hat + bias[:, None, None]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x_hat, var, weight = ctx.saved_tensors
        g = weight[:, None, None] * grad_out  # dL/dx_hat
        # dL/dx = (g - mean_c(g) - x_hat * mean_c(g * x_hat)) / sqrt(var + eps)
        grad_x = (g - g.mean(1, keepdim=True) - x_hat * (g * x_hat).mean(1, keepdim=True)) / torch.sqrt(var + ctx.eps)
        return grad_x, (grad_out * x_hat).sum((0, 2, 3)), grad_out.sum((0, 2, 3)), None


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at every pixel (NCHW)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps)


class SimpleGate(nn.Module):
    """Split channels in half and multiply: a GELU-free nonlinearity."""

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


def dense_convolutions_saved(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """"elementwise": keep the outputs of the dense (groups == 1) convolutions, the costly ops; recompute the rest."""
    if op is torch.ops.aten.convolution.default and args[8] == 1:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def expansions_saved(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """"expansions": keep only the outputs of the expanding convolutions (conv1 and conv4, C -> 2C); conv3 and
    conv5 (C -> C, a third of a block's dense FLOPs) are recomputed with the element-wise ops."""
    if op is torch.ops.aten.convolution.default and args[8] == 1 and args[1].shape[0] > args[1].shape[1]:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def keep_dense_convolutions():
    return create_selective_checkpoint_contexts(dense_convolutions_saved)


def keep_expansions():
    return create_selective_checkpoint_contexts(expansions_saved)


SELECTIVE = {"elementwise": keep_dense_convolutions, "expansions": keep_expansions}  # checkpoint context_fn


class NAFBlock(nn.Module):
    recompute = "none"  # what the backward pass recomputes instead of keeping: one of RECOMPUTE (`set_recompute`)
    bf16_residual = False  # under autocast, keep the residual stream in the branches' dtype (`set_bf16_residual`)

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2):
        super().__init__()
        dw = channels * dw_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)  # depthwise 3x3
        self.gate = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))  # channel attention
        self.conv3 = nn.Conv2d(dw // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn_expand * channels, 1)
        self.conv5 = nn.Conv2d(ffn_expand * channels // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp):
        if self.recompute == "none" or not torch.is_grad_enabled():
            return self.block(inp)
        if self.recompute in SELECTIVE:
            return checkpoint(self.block, inp, use_reentrant=False, context_fn=SELECTIVE[self.recompute])
        return checkpoint(self.block, inp, use_reentrant=False)  # no context_fn: dynamo cannot trace noop_context_fn

    def block(self, inp):
        x = self.gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + self.scaled(x, self.beta)
        x = self.conv5(self.gate(self.conv4(self.norm2(y))))
        return y + self.scaled(x, self.gamma)

    def scaled(self, x, scale):
        """x * scale. Under autocast x is bf16 and the fp32 scale promotes the residual sum to fp32; with
        bf16_residual the scale is cast to x's dtype instead, so the stream stays bf16 and a checkpointed block
        keeps its input at half the bytes. fp32 training is unchanged either way."""
        return x * (scale.to(x.dtype) if self.bf16_residual else scale)


def set_recompute(model: nn.Module, recompute: str) -> None:
    """Trade NAFBlock memory for time: "elementwise" recomputes the norms, gates and attention but keeps the dense
    convolutions' outputs (about half a block's saved bytes); "expansions" keeps only the expanding convolutions'
    outputs; "blocks" keeps only each block's input (BENCHMARKS.md has each one's bytes)."""
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute: {recompute!r} is not one of {', '.join(RECOMPUTE)}")
    for module in model.modules():
        if isinstance(module, NAFBlock):
            module.recompute = recompute


def set_bf16_residual(model: nn.Module, on: bool) -> None:
    """NAFBlocks' residual stream in bf16 under bf16 autocast (Megatron's default; its fp32 statistics stay in
    LayerNorm2d): with `recompute: expansions` the paper's Stage I fits 40 GiB at batch 48 (BENCHMARKS.md)."""
    for module in model.modules():
        if isinstance(module, NAFBlock):
            module.bf16_residual = on


def compile_blocks(model: nn.Module, mode: str | None = None) -> None:
    """Regional compilation: torch.compile each NAFBlock, not the whole model, so that every block shape compiles
    once and the rest stays eager (a whole Stage I had not compiled after 230 s on an H200, BENCHMARKS.md).
    mode="reduce-overhead" adds CUDA graphs on a GPU."""
    for module in model.modules():
        if isinstance(module, NAFBlock):
            module.compile(mode=mode)


def blocks(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*[NAFBlock(channels) for _ in range(count)])


class NAFEncoder(nn.Module):
    """in_channels x H x W -> per-level features (skips) and a bottleneck.

    Level i has width * 2**i channels at H / 2**i; the bottleneck has width * 2**levels
    channels at H / 2**levels, levels = len(enc_blocks).
    """

    def __init__(self, in_channels: int, width: int, enc_blocks: list[int], middle_blocks: int):
        super().__init__()
        self.intro = nn.Conv2d(in_channels, width, 3, padding=1)
        self.levels, self.downs = nn.ModuleList(), nn.ModuleList()
        channels = width
        for count in enc_blocks:
            self.levels.append(blocks(channels, count))
            self.downs.append(nn.Conv2d(channels, 2 * channels, 2, stride=2))
            channels *= 2
        self.middle = blocks(channels, middle_blocks)
        self.out_channels = channels

    def forward(self, x):
        skips = []
        x = self.intro(x)  # B x width x H x W
        for level, down in zip(self.levels, self.downs):
            x = level(x)
            skips.append(x)
            x = down(x)  # channels x2, H and W /2
        return skips, self.middle(x)  # bottleneck: B x out_channels x H/2^levels x W/2^levels


class NAFDecoder(nn.Module):
    """Bottleneck (+ encoder skips, added level by level) -> out_channels x H x W."""

    def __init__(self, width: int, dec_blocks: list[int], out_channels: int):
        super().__init__()
        self.ups, self.levels = nn.ModuleList(), nn.ModuleList()
        channels = width * 2 ** len(dec_blocks)
        for count in dec_blocks:
            # 1x1 to twice the channels, then PixelShuffle: half the channels at twice the size
            self.ups.append(nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            self.levels.append(blocks(channels, count))
        self.ending = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x, skips: list[torch.Tensor] | None = None):
        for i, (up, level) in enumerate(zip(self.ups, self.levels)):
            x = up(x)
            if skips is not None:
                x = x + skips[-1 - i]
            x = level(x)
        return self.ending(x)
