"""Partitioners that need no model weights: SLIC, Felzenszwalb (scikit-image), fixed grid, single region.

They make the partition itself an ablation axis: ``grid`` cells of ``window * 4`` pixels turn R-MSA into
window attention and ``single`` turns it into global MSA.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage import segmentation

from ratlit.partition.base import Partitioner, as_window, to_unit_range
from ratlit.utils.errors import InputError


class SlicPartitioner(Partitioner):
    """SLIC superpixels (Achanta et al. 2012) on the windowed image scaled to [0, 1].

    ``compactness=None`` picks 0.1 for grey images (intensities in [0, 1]) and 10 for RGB (scikit-image
    converts RGB to Lab, whose range is about 100).
    """

    name = "slic"

    def __init__(
        self, n_segments: int = 100, compactness: float | None = None, sigma: float = 1.0, window=None
    ) -> None:
        if n_segments < 1 or (compactness is not None and compactness <= 0):
            raise InputError(f"need n_segments >= 1 and compactness > 0, got {n_segments}, {compactness}")
        self.n_segments, self.sigma = int(n_segments), float(sigma)
        self.compactness = None if compactness is None else float(compactness)
        self.window = as_window(window)

    def _partition(self, image: np.ndarray) -> np.ndarray:
        unit = to_unit_range(image, self.window)
        channel_axis = None if unit.shape[-1] == 1 else -1
        compactness = self.compactness or (0.1 if channel_axis is None else 10.0)
        return segmentation.slic(
            unit[..., 0] if channel_axis is None else unit,
            n_segments=self.n_segments,
            compactness=compactness,
            sigma=self.sigma,
            channel_axis=channel_axis,
            start_label=0,
            enforce_connectivity=True,
        )

    def params(self) -> dict[str, Any]:
        return {"n_segments": self.n_segments, "compactness": self.compactness, "sigma": self.sigma,
                "window": self.window}


class FelzenszwalbPartitioner(Partitioner):
    """Felzenszwalb-Huttenlocher graph segmentation: few, size-adaptive (heavy-tailed) regions, like SAM's."""

    name = "felzenszwalb"

    def __init__(self, scale: float = 100.0, sigma: float = 0.8, min_size: int = 50, window=None) -> None:
        if scale <= 0 or min_size < 1:
            raise InputError(f"need scale > 0 and min_size >= 1, got {scale}, {min_size}")
        self.scale, self.sigma, self.min_size = float(scale), float(sigma), int(min_size)
        self.window = as_window(window)

    def _partition(self, image: np.ndarray) -> np.ndarray:
        unit = to_unit_range(image, self.window)
        channel_axis = None if unit.shape[-1] == 1 else -1
        return segmentation.felzenszwalb(
            unit[..., 0] if channel_axis is None else unit,
            scale=self.scale,
            sigma=self.sigma,
            min_size=self.min_size,
            channel_axis=channel_axis,
        )

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "sigma": self.sigma, "min_size": self.min_size, "window": self.window}


class GridPartitioner(Partitioner):
    """Fixed square cells of ``cell_size`` pixels (16 = RAT's 4x4 windows at 1/4 resolution)."""

    name = "grid"

    def __init__(self, cell_size: int = 16) -> None:
        if cell_size < 1:
            raise InputError(f"cell_size must be >= 1, got {cell_size}")
        self.cell_size = int(cell_size)

    def _partition(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        rows = np.arange(h)[:, None] // self.cell_size
        cols = np.arange(w)[None, :] // self.cell_size
        return rows * (-(-w // self.cell_size)) + cols

    def params(self) -> dict[str, Any]:
        return {"cell_size": self.cell_size}


class SinglePartitioner(Partitioner):
    """The whole image as one region: R-MSA becomes global MSA."""

    name = "single"

    def _partition(self, image: np.ndarray) -> np.ndarray:
        return np.zeros(image.shape[:2], dtype=np.int64)

    def params(self) -> dict[str, Any]:
        return {}
