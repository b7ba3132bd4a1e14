"""A random crop of an LQ/HQ pair and its label map, with the same flip/rotation on all three."""

from __future__ import annotations

import torch


def random_paired_crop(
    lq: torch.Tensor, hq: torch.Tensor, regions: torch.Tensor, size: int, augment: bool,
    generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random ``size x size`` window of all three, then one of the 8 dihedral transforms if ``augment``."""
    height, width = lq.shape[-2:]
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    crops = [t[..., top : top + size, left : left + size] for t in (lq, hq, regions)]
    if augment:
        k = int(torch.randint(0, 4, (1,), generator=generator))
        flip = bool(torch.randint(0, 2, (1,), generator=generator))
        crops = [torch.rot90(t, k, dims=(-2, -1)) for t in crops]
        if flip:
            crops = [torch.flip(t, dims=(-1,)) for t in crops]
    return tuple(t.contiguous() for t in crops)
