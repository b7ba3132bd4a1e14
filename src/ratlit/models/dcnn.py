"""A 2D residual DCNN for PET denoising in the manner of Chan et al. ("Noise adaptive deep convolutional
neural network for whole-body PET denoising", IEEE NSS/MIC 2018): a deep stack of 3x3 conv + batch-norm +
ReLU layers that predicts the noise, subtracted from the input (residual learning)."""

from __future__ import annotations

from torch import Tensor, nn

from ratlit.models.blocks import zero_init_
from ratlit.utils.checks import check_image
from ratlit.utils.errors import InputError


class ResidualDCNN(nn.Module):
    """``[B, C, H, W] -> [B, C, H, W]``: ``depth`` conv layers of ``features`` channels; output = input - noise."""

    def __init__(self, in_channels: int = 1, features: int = 64, depth: int = 12, zero_init_last: bool = True) -> None:
        super().__init__()
        if depth < 2:
            raise InputError(f"depth must be >= 2, got {depth}")
        self.in_channels = in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        if zero_init_last:  # an untrained network returns its input: training starts from the input's score
            zero_init_(self.body[-1])

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        return lq - self.body(lq)
