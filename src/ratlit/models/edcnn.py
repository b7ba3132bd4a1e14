"""EDCNN (Liang et al., "EDCNN: Edge enhancement-based densely connected network with compound loss for
low-dose CT denoising", ICSP 2020): a trainable-Sobel edge module, eight densely connected conv blocks fed
with the input and its edges, and a global residual. The compound loss (MSE + multi-scale perceptual) is
``ratlit.losses.CompoundLoss`` (``loss=edcnn``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ratlit.models.blocks import zero_init_
from ratlit.utils.checks import check_image
from ratlit.utils.errors import InputError

_SOBEL = torch.tensor(
    [
        [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],  # horizontal edges
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],  # vertical edges
        [[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]],  # diagonal
        [[0.0, -1.0, -2.0], [1.0, 0.0, -1.0], [2.0, 1.0, 0.0]],  # anti-diagonal
    ]
)


class SobelConv2d(nn.Module):
    """Fixed Sobel kernels in four directions with a trainable gain per output channel:
    ``[B, C, H, W] -> [B, out_channels, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int = 32) -> None:
        super().__init__()
        if out_channels % 4:
            raise InputError(f"out_channels must be a multiple of 4 (four Sobel directions), got {out_channels}")
        kernels = _SOBEL.repeat(out_channels // 4, 1, 1)[:, None].repeat(1, in_channels, 1, 1)
        self.register_buffer("kernels", kernels)
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernels * self.gain, self.bias, padding=1)


class EDCNN(nn.Module):
    """``[B, C, H, W] -> [B, C, H, W]``: edges (32 ch) + input -> 8 dense blocks (1x1 + 3x3 conv, 32 ch) -> residual."""

    def __init__(self, in_channels: int = 1, edge_channels: int = 32, features: int = 32, blocks: int = 8,
                 zero_init_last: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.edges = SobelConv2d(in_channels, edge_channels)
        guide = in_channels + edge_channels
        self.blocks = nn.ModuleList()
        for i in range(blocks):
            last = i == blocks - 1
            self.blocks.append(nn.Sequential(
                nn.Conv2d(guide if i == 0 else guide + features, features, 1), nn.LeakyReLU(inplace=True),
                nn.Conv2d(features, in_channels if last else features, 3, padding=1),
                *([] if last else [nn.LeakyReLU(inplace=True)]),
            ))
        if zero_init_last:  # an untrained network returns its input (>= 0): training starts from the input's score
            zero_init_(self.blocks[-1][2])

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        guide = torch.cat([lq, self.edges(lq)], dim=1)
        x = self.blocks[0](guide)
        for block in self.blocks[1:]:
            x = block(torch.cat([x, guide], dim=1))
        return F.relu(x + lq)
