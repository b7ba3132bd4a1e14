"""Pathology super-resolution: a folder of HQ images; LQ = 4x bicubic down-sampling and back up (the paper).

Real layout (``root``): HQ images (PNG, TIFF, JPEG; grey images are repeated to 3 channels) directly in
the folder; each image is its own group for splitting. HQ is cropped to a multiple of ``scale`` (as
BasicSR does), LQ is ``bicubic_up(bicubic_down(HQ))`` with antialiasing on the way down, clipped to [0, 1].

Embedded set: scikit-image's immunohistochemistry image (512 x 512 RGB, the only histology image a
package here ships), tiled into spatially disjoint parts: train = the left 320 columns (512 x 320),
val = the top-right 192 x 192, test = the bottom-right 320 x 192.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ratlit.data.datamodule import RestorationDataModule
from ratlit.data.io import find_images, read_image, write_image
from ratlit.data.sample import Sample
from ratlit.data.splits import write_splits
from ratlit.data.unit_map import UnitMap
from ratlit.utils.errors import InputError


def bicubic_degrade(hq: np.ndarray, scale: int = 4) -> np.ndarray:
    """``[C, H, W]`` (H, W multiples of ``scale``) -> bicubic down by ``scale`` and back up, clipped to [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(hq, dtype=np.float32))[None]
    small = F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False)
    return up[0].clamp(0, 1).numpy()


def _load_pathology_pair(path: Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    hq = read_image(path)
    if hq.shape[0] == 1:
        hq = np.repeat(hq, 3, axis=0)
    h, w = (hq.shape[1] // scale) * scale, (hq.shape[2] // scale) * scale
    if h == 0 or w == 0:
        raise InputError(f"image {path} ({hq.shape[1]}x{hq.shape[2]}) is smaller than the scale factor {scale}")
    hq = np.ascontiguousarray(hq[:, :h, :w])
    return bicubic_degrade(hq, scale), hq


class PathologyDataModule(RestorationDataModule):
    """HQ pathology images -> (4x bicubic LQ, HQ) pairs, three channels in [0, 1]."""

    task = "pathology"

    def __init__(self, root: str | None = None, scale: int = 4, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        if scale < 2:
            raise InputError(f"scale must be >= 2, got {scale}")
        self.scale = scale

    def list_samples(self, root: Path) -> list[Sample]:
        return [Sample(p.stem, p.stem, partial(_load_pathology_pair, p, self.scale)) for p in find_images(root)]

    def build_embedded(self, folder: Path, seed: int) -> None:
        build_embedded_pathology(folder)

    input_formats = ("image",)

    def unit_map(self, volume: np.ndarray, source: str) -> UnitMap:
        """Pixels in [0, 1] as ``read_image`` gives them, the units the network trains on."""
        return UnitMap(clip=(0.0, 1.0))


EMBEDDED_TILES = {  # name -> (rows, cols) of the 512 x 512 IHC image
    "ihc-train": (slice(0, 512), slice(0, 320)),
    "ihc-val": (slice(0, 192), slice(320, 512)),
    "ihc-test": (slice(192, 512), slice(320, 512)),
}


def build_embedded_pathology(folder: Path) -> None:
    """Write the IHC tiles as PNG with a split file; deterministic (no randomness involved)."""
    from skimage import data

    image = data.immunohistochemistry().astype(np.float32) / 255.0
    for name, (rows, cols) in EMBEDDED_TILES.items():
        write_image(folder / f"{name}.png", np.moveaxis(image[rows, cols], -1, 0))
    write_splits(folder, {"train": ["ihc-train"], "val": ["ihc-val"], "test": ["ihc-test"]})
