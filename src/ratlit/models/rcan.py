"""RCAN (Zhang et al., "Image super-resolution using very deep residual channel attention networks",
ECCV 2018): residual groups of residual channel-attention blocks, long and short skips. The paper's model
has 10 groups x 20 blocks (about 15 M parameters); the default here is 4 x 8, configurable. As with EDSR,
the input is the bicubic-upsampled image, so there is no upsampler and a global residual is added."""

from __future__ import annotations

from torch import Tensor, nn

from ratlit.models.blocks import zero_init_
from ratlit.utils.checks import check_image


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate: ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, features: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(features // reduction, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(features, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, features, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class RCAB(nn.Module):
    """Residual channel-attention block: ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, features: int, reduction: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, features, 3, padding=1), ChannelAttention(features, reduction))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """``blocks`` RCABs and a conv with a short skip: ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, features: int, blocks: int, reduction: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(*(RCAB(features, reduction) for _ in range(blocks)),
                                  nn.Conv2d(features, features, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class RCAN(nn.Module):
    """``[B, C, H, W] -> [B, C, H, W]``: head, ``groups`` residual groups + conv with a long skip, tail."""

    def __init__(self, in_channels: int = 3, features: int = 64, groups: int = 4, blocks: int = 8,
                 reduction: int = 16, zero_init_last: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.head = nn.Conv2d(in_channels, features, 3, padding=1)
        self.body = nn.Sequential(*(ResidualGroup(features, blocks, reduction) for _ in range(groups)),
                                  nn.Conv2d(features, features, 3, padding=1))
        self.tail = nn.Conv2d(features, in_channels, 3, padding=1)
        if zero_init_last:  # an untrained network returns its input: training starts from the input's score
            zero_init_(self.tail)

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        x = self.head(lq)
        return lq + self.tail(x + self.body(x))
