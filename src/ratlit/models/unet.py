"""A 2D U-Net (Ronneberger et al., MICCAI 2015) for image-to-image synthesis, the encoder-decoder family
of the PET baselines (Xiang et al.'s auto-context CNN, DCSRN), here in 2D as the suite is 2D: double
3x3 conv + batch-norm + ReLU per level, max-pool down, transposed-conv up, skips by concatenation, and a
global residual on the input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ratlit.models.blocks import zero_init_
from ratlit.utils.checks import check_image


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv - BN - ReLU) x 2: ``[B, Cin, H, W] -> [B, Cout, H, W]``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """``[B, C, H, W] -> [B, C, H, W]`` for any H, W (padded to a multiple of ``2**levels``, cropped back)."""

    def __init__(self, in_channels: int = 1, features: int = 32, levels: int = 4, zero_init_last: bool = True) -> None:
        super().__init__()
        self.in_channels, self.levels = in_channels, levels
        widths = [features * 2**i for i in range(levels + 1)]
        self.downs = nn.ModuleList([double_conv(in_channels, widths[0])] +
                                   [double_conv(widths[i], widths[i + 1]) for i in range(levels)])
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(levels)))
        self.merges = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in reversed(range(levels)))
        self.out = nn.Conv2d(widths[0], in_channels, 1)
        if zero_init_last:  # an untrained network returns its input: training starts from the input's score
            zero_init_(self.out)

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        height, width = lq.shape[-2:]
        multiple = 2**self.levels
        x = F.pad(lq, (0, -width % multiple, 0, -height % multiple), mode="replicate")
        skips = []
        for i, down in enumerate(self.downs):
            x = down(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.ups, self.merges, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return lq + self.out(x)[..., :height, :width]
