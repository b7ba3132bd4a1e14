"""Restoration losses with one call signature: ``loss(pred, target, regions=None) -> scalar``.

``FocalRegionLoss`` is Eq. 5 of the paper: per-pixel L1 weighted by ``1 + gamma * w_i``, where ``w_i`` is
the mean error of the pixel's region raised to ``delta`` and divided by the largest such value in the same
image. Region statistics use ``index_add`` over sorted region runs (no Python loop over regions, no host sync).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ratlit.models.region_attention import build_region_layout
from ratlit.utils.checks import check_image, check_labels, check_same_batch
from ratlit.utils.errors import InputError


def _check_pair(pred: Tensor, target: Tensor) -> None:
    check_image("pred", pred)
    check_image("target", target)
    check_same_batch(pred=pred, target=target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")


class L1Loss(nn.Module):
    """Mean absolute error; ``regions`` is accepted and ignored."""

    def forward(self, pred: Tensor, target: Tensor, regions: Tensor | None = None) -> Tensor:
        _check_pair(pred, target)
        return (pred - target).abs().mean()


class MSELoss(nn.Module):
    """Mean squared error; ``regions`` is accepted and ignored."""

    def forward(self, pred: Tensor, target: Tensor, regions: Tensor | None = None) -> Tensor:
        _check_pair(pred, target)
        return (pred - target).pow(2).mean()


class CompoundLoss(nn.Module):
    """EDCNN's compound loss (Liang et al. 2020): ``mse_weight * MSE + perceptual_weight * multi-scale
    perceptual loss``, the latter the mean MSE between ImageNet ResNet-50 features of the four stages.

    ``perceptual_checkpoint``: torchvision's ResNet-50 ImageNet weights (``resnet50-*.pth``); nothing is
    downloaded. ``perceptual_weight=0`` needs none and is plain MSE.
    """

    IMAGENET_MEAN = (0.485, 0.456, 0.406)
    IMAGENET_STD = (0.229, 0.224, 0.225)

    def __init__(self, mse_weight: float = 1.0, perceptual_weight: float = 0.01,
                 perceptual_checkpoint: str | None = None) -> None:
        super().__init__()
        if mse_weight < 0 or perceptual_weight < 0:
            raise InputError(f"weights must be >= 0, got mse_weight={mse_weight}, "
                             f"perceptual_weight={perceptual_weight}")
        self.mse_weight, self.perceptual_weight = mse_weight, perceptual_weight
        self.features = None
        if perceptual_weight > 0:
            if not perceptual_checkpoint:
                raise InputError(
                    "EDCNN's compound loss needs ImageNet ResNet-50 weights: set loss.perceptual_checkpoint="
                    "/path/to/resnet50-0676ba61.pth (or $RATLIT_RESNET50_CHECKPOINT), or loss.perceptual_weight=0"
                )
            from ratlit.models.perceptual import ResNet50Features

            self.features = ResNet50Features(perceptual_checkpoint)
        self.register_buffer("mean", torch.tensor(self.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _imagenet(self, x: Tensor) -> Tensor:
        x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x[:, :3]
        return (x - self.mean) / self.std

    def forward(self, pred: Tensor, target: Tensor, regions: Tensor | None = None) -> Tensor:
        _check_pair(pred, target)
        loss = self.mse_weight * (pred - target).pow(2).mean()
        if self.features is not None:
            with torch.no_grad():
                wanted = self.features(self._imagenet(target))
            got = self.features(self._imagenet(pred))
            distances = sum((g - w).pow(2).mean() for g, w in zip(got, wanted, strict=True))
            loss = loss + self.perceptual_weight * distances / len(got)
        return loss


class CharbonnierLoss(nn.Module):
    """Mean of ``sqrt((pred - target)^2 + eps^2)``, a smooth L1; ``regions`` is accepted and ignored."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        if eps <= 0:
            raise InputError(f"eps must be positive, got {eps}")
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor, regions: Tensor | None = None) -> Tensor:
        _check_pair(pred, target)
        return torch.sqrt((pred - target).pow(2) + self.eps**2).mean()


class FocalRegionLoss(nn.Module):
    """Focal region loss (Eq. 5): ``mean((1 + gamma * w[region]) * |pred - target|)``; exactly L1 when gamma = 0.

    ``regions`` is an integer label map ``[B, H, W]`` (any ids). A region's error is the mean absolute error
    over its pixels and channels; weights are normalised by the largest region error of the same image.
    """

    def __init__(self, gamma: float = 1e-3, delta: float = 1.0) -> None:
        super().__init__()
        if gamma < 0 or delta <= 0:
            raise InputError(f"need gamma >= 0 and delta > 0, got gamma={gamma}, delta={delta}")
        self.gamma, self.delta = gamma, delta

    def forward(self, pred: Tensor, target: Tensor, regions: Tensor | None = None) -> Tensor:
        _check_pair(pred, target)
        if regions is None:
            raise ValueError("FocalRegionLoss needs regions, an integer label map [B, H, W]; got None")
        check_labels("regions", regions, (pred.shape[0], *pred.shape[2:]))
        error = (pred - target).abs()
        if error.dtype in (torch.float16, torch.bfloat16):  # region statistics need float32's precision
            error = error.float()
        if self.gamma == 0:
            return error.mean()
        return (error * (1 + self.gamma * self.region_weights(error, regions.to(error.device)))).mean()

    def region_weights(self, error: Tensor, regions: Tensor) -> Tensor:
        """Per-pixel weights ``w`` ``[B, 1, H, W]`` from the absolute error ``[B, C, H, W]``.

        Regions are the runs of the sorted region layout (as R-MSA's FlexAttention path sorts tokens: per
        image, numbered across the batch), with statistics in arrays of one slot per pixel: every size is
        known in advance, so nothing waits for the GPU (unlike ``torch.unique``, whose output size the host
        must read).
        """
        batch = error.shape[0]
        layout = build_region_layout(regions.reshape(batch, -1), packed=False)
        pixels = layout.tokens
        index = layout.run_id[layout.inverse]  # each pixel's region, image order
        pixel_error = error.mean(dim=1).flatten()
        sums = torch.zeros_like(pixel_error).index_add(0, index, pixel_error)
        counts = torch.zeros_like(pixel_error).index_add(0, index, torch.ones_like(pixel_error)).clamp_min(1)
        # Clamped: keeps 0 ** delta (infinite slope for delta < 1) and 0 / 0 (a perfect prediction) finite.
        tiny = torch.finfo(error.dtype).tiny
        mean_error = sums / counts
        region_error = torch.where(mean_error > 0, mean_error.clamp_min(tiny).pow(self.delta), 0.0)
        per_pixel = region_error[index].view(batch, pixels)
        largest = per_pixel.amax(dim=1, keepdim=True).clamp_min(tiny)  # every region has a pixel
        return (per_pixel / largest).view(batch, 1, *error.shape[2:])


LOSSES = {"l1": L1Loss, "mse": MSELoss, "charbonnier": CharbonnierLoss, "fr": FocalRegionLoss, "edcnn": CompoundLoss}
