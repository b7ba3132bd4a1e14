"""RED-CNN (Chen et al., "Low-dose CT with a residual encoder-decoder convolutional neural network",
IEEE TMI 2017): five 5x5 convolutions (96 filters, no padding) and five mirrored transposed convolutions
with three residual shortcuts (input -> output, conv2 -> deconv4, conv4 -> deconv2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ratlit.models.blocks import zero_init_
from ratlit.utils.checks import check_image
from ratlit.utils.errors import InputError


class REDCNN(nn.Module):
    """``[B, C, H, W] -> [B, C, H, W]``; needs H, W >= 21 (five unpadded 5x5 convolutions)."""

    def __init__(self, in_channels: int = 1, features: int = 96, kernel: int = 5, zero_init_last: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.min_size = 5 * (kernel - 1) + 1
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_channels if i == 0 else features, features, kernel) for i in range(5)]
        )
        self.deconvs = nn.ModuleList(
            [nn.ConvTranspose2d(features, in_channels if i == 4 else features, kernel) for i in range(5)]
        )
        if zero_init_last:  # an untrained network returns its input (>= 0): training starts from the input's score
            zero_init_(self.deconvs[4])

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        if min(lq.shape[-2:]) < self.min_size:
            raise InputError(f"RED-CNN needs images of at least {self.min_size}x{self.min_size}, "
                             f"got {tuple(lq.shape[-2:])}")
        c1 = F.relu(self.convs[0](lq))
        c2 = F.relu(self.convs[1](c1))
        c3 = F.relu(self.convs[2](c2))
        c4 = F.relu(self.convs[3](c3))
        c5 = F.relu(self.convs[4](c4))
        d1 = F.relu(self.deconvs[0](c5) + c4)
        d2 = F.relu(self.deconvs[1](d1))
        d3 = F.relu(self.deconvs[2](d2) + c2)
        d4 = F.relu(self.deconvs[3](d3))
        return F.relu(self.deconvs[4](d4) + lq)
