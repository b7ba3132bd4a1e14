"""EDSR (Lim et al., "Enhanced deep residual networks for single image super-resolution", CVPRW 2017),
baseline size: 16 residual blocks of 64 features, residual scaling 1. In this suite the LQ image is already
bicubic-upsampled to the HQ size (the paper's protocol), so EDSR's upsampler is left out and a global
residual on the input takes the place of its mean shift."""

from __future__ import annotations

from torch import Tensor, nn

from ratlit.models.blocks import zero_init_
from ratlit.utils.checks import check_image


class ResBlock(nn.Module):
    """conv - ReLU - conv, scaled, plus the input: ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, features: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, features, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """``[B, C, H, W] -> [B, C, H, W]``: head conv, ``blocks`` ResBlocks + conv with a long skip, tail conv."""

    def __init__(self, in_channels: int = 3, features: int = 64, blocks: int = 16, res_scale: float = 1.0,
                 zero_init_last: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.head = nn.Conv2d(in_channels, features, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(features, res_scale) for _ in range(blocks)),
                                  nn.Conv2d(features, features, 3, padding=1))
        self.tail = nn.Conv2d(features, in_channels, 3, padding=1)
        if zero_init_last:  # an untrained network returns its input: training starts from the input's score
            zero_init_(self.tail)

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        x = self.head(lq)
        return lq + self.tail(x + self.body(x))
