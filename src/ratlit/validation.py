"""Input checks shared by the network, the attention kernels and the losses.

Every failure is a ``ValueError`` that names the offending argument, so a wrong call
fails at the boundary with a message instead of deep inside a matmul.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_image(name: str, x: object, channels: int | None = None) -> Tensor:
    """Check a float image batch ``[B, C, H, W]`` with finite values."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
    if min(x.shape) == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_labels(name: str, labels: object, shape: tuple[int, ...]) -> Tensor:
    """Check an integer label map of exactly ``shape`` (e.g. ``[B, H, W]`` or ``[B, N]``)."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integer region ids, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must have an integer dtype (region ids), got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        if labels.ndim == len(shape) and labels.shape[0] != shape[0]:
            raise ValueError(
                f"{name} has batch size {labels.shape[0]} but the images have batch size {shape[0]}"
            )
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(labels.shape)}")
    return labels


def check_same_batch(**tensors: Tensor) -> None:
    """Check that all named tensors share one batch size."""
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch sizes differ: {sizes}")
