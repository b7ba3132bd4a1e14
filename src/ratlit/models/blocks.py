"""Convolutional building blocks of RAT's encoder and decoder (NAFNet, Chen et al., ECCV 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ratlit.utils.errors import InputError


def scaled_output(layer: nn.Linear | nn.Conv2d, x: Tensor, scale: Tensor) -> Tensor:
    """``layer(x) * scale`` (one factor per output channel) as ``layer`` with its weight and bias scaled.

    The same values, without a pass over the output, and backward keeps only ``x`` (which the layer keeps
    anyway) where the product would also keep ``layer(x)``: the layer scales of NAFBlocks and RAT layers
    held about a tenth of a training step's saved activations that way.
    """
    factor = scale.reshape(-1)
    weight = layer.weight * factor.view(-1, *([1] * (layer.weight.ndim - 1)))
    bias = None if layer.bias is None else layer.bias * factor
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, bias)
    return F.linear(x, weight, bias)


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of a ``[B, C, H, W]`` map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # The fused layer_norm kernel on a channels-last view saves less for backward than a hand-written norm.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class _HalvesProduct(torch.autograd.Function):
    """``a * b`` of the two channel halves of ``x``. Its backward writes both halves' gradients into one buffer
    in ``x``'s memory format: autograd's own (two products, then chunk's backward, a cat) copies the whole
    gradient once more, about a tenth of a full-resolution NAFBlock's forward + backward on the CPU."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        a, b = x.chunk(2, dim=1)
        return a * b

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        a, b = x.chunk(2, dim=1)
        grad_x = torch.empty_like(x)
        grad_a, grad_b = grad_x.chunk(2, dim=1)
        torch.mul(grad, b, out=grad_a)
        torch.mul(grad, a, out=grad_b)
        return grad_x


class SimpleGate(nn.Module):
    """Split channels in two halves and multiply them: ``[B, 2C, H, W] -> [B, C, H, W]``."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2:
            raise ValueError(f"SimpleGate needs an even channel count, got {x.shape[1]}")
        if torch.is_grad_enabled() and x.requires_grad:
            return _HalvesProduct.apply(x)
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """Nonlinear-activation-free block ``[B, C, H, W] -> [B, C, H, W]``.

    ``layer_scale_init`` starts both residual branches' per-channel scales (NAFNet: 0).
    """

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2, layer_scale_init: float = 0.0) -> None:
        super().__init__()
        dw = channels * dw_expand
        ffn = channels * ffn_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.gate = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, channels, 1)
        self.beta = nn.Parameter(torch.full((1, channels, 1, 1), float(layer_scale_init)))
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), float(layer_scale_init)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.gate(self.conv2(self.conv1(self.norm1(x))))
        x = x + scaled_output(self.conv3, y * self.sca(y), self.beta)
        return x + scaled_output(self.conv5, self.gate(self.conv4(self.norm2(x))), self.gamma)


def nafblocks(channels: int, count: int, layer_scale_init: float = 0.0) -> nn.Sequential:
    """``count`` NAFBlocks in a row, ``[B, C, H, W] -> [B, C, H, W]``."""
    return nn.Sequential(*(NAFBlock(channels, layer_scale_init=layer_scale_init) for _ in range(count)))


DOWNSAMPLE_MODES = ("pixel_unshuffle", "conv")


class Downsample(nn.Sequential):
    """Halve H and W, double C: ``[B, C, H, W] -> [B, 2C, H/2, W/2]``.

    ``pixel_unshuffle`` (the paper): 3x3 conv to C/2 then pixel-unshuffle;
    ``conv`` (the authors' public code): 2x2 convolution with stride 2.
    """

    def __init__(self, channels: int, mode: str = "pixel_unshuffle") -> None:
        if mode == "pixel_unshuffle":
            if channels % 2:
                raise InputError(f"pixel_unshuffle down-sampling needs an even channel count, got {channels}")
            layers = [nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2)]
        elif mode == "conv":
            layers = [nn.Conv2d(channels, 2 * channels, 2, stride=2)]
        else:
            raise InputError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {mode!r}")
        super().__init__(*layers)


class Upsample(nn.Sequential):
    """Double H and W, halve C by 1x1 conv + pixel-shuffle: ``[B, C, H, W] -> [B, C/2, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2))


def zero_init_(layer: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias in place: the last layer of a residual path, so ``x + f(x)`` starts as ``x``."""
    nn.init.zeros_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer
