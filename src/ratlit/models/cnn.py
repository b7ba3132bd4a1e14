"""Plain convolutional restorers: the 3-layer CT CNN of Chen et al. and SRCNN of Dong et al.

Both map an image to an image of the same size (SRCNN takes the bicubic-upsampled LR image, as the
suite's pathology LQ already is). ``regions`` is accepted and ignored, like every baseline.
"""

from __future__ import annotations

from torch import Tensor, nn

from ratlit.utils.checks import check_image


class ThreeLayerCNN(nn.Module):
    """Conv(k1, f1) - ReLU - Conv(k2, f2) - ReLU - Conv(k3, C): ``[B, C, H, W] -> [B, C, H, W]`` ('same' padding)."""

    def __init__(self, in_channels: int = 1, features: tuple[int, int] | list[int] = (64, 32),
                 kernels: tuple[int, int, int] | list[int] = (9, 3, 5), residual: bool = False) -> None:
        super().__init__()
        f1, f2 = features
        k1, k2, k3 = kernels
        self.in_channels, self.residual = in_channels, residual
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, f1, k1, padding=k1 // 2), nn.ReLU(inplace=True),
            nn.Conv2d(f1, f2, k2, padding=k2 // 2), nn.ReLU(inplace=True),
            nn.Conv2d(f2, in_channels, k3, padding=k3 // 2),
        )

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        out = self.body(lq)
        return lq + out if self.residual else out


class ChenCNN(ThreeLayerCNN):
    """Low-dose CT CNN (Chen et al., "Low-dose CT denoising with convolutional neural network", ISBI 2017):
    three layers, 64 9x9 and 32 3x3 filters, a 5x5 reconstruction layer; ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, in_channels: int = 1, features=(64, 32), kernels=(9, 3, 5)) -> None:
        super().__init__(in_channels, features, kernels, residual=False)


class SRCNN(ThreeLayerCNN):
    """SRCNN (Dong et al., "Image super-resolution using deep convolutional networks", TPAMI 2016), the
    9-5-5 model with 64 / 32 filters on the bicubic-upsampled image; ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, in_channels: int = 3, features=(64, 32), kernels=(9, 5, 5)) -> None:
        super().__init__(in_channels, features, kernels, residual=False)
