"""A trained network with its partitioner, restoring one image (in network units) in tiles."""

from __future__ import annotations

import numpy as np
import torch

from ratlit.models.tiling import Tiling, tile_multiple, tiled_forward
from ratlit.partition import PartitionCache
from ratlit.partition.density import DensityKeepingCache


class Restorer:
    """A trained module + its partitioner; ``restorer(image [C, H, W]) -> [C, H, W]`` in network units.

    Regions are computed on the whole image (or given: the user's own label map); the network runs on tiles of
    ``tiling`` (ratlit.inference)."""

    def __init__(self, module: torch.nn.Module, cache: PartitionCache | DensityKeepingCache | None,
                 device: torch.device,
                 tiling: Tiling = Tiling(None)) -> None:
        self.module, self.cache, self.device, self.tiling = module.to(device), cache, device, tiling
        self.multiple = tile_multiple(getattr(module, "net", module))
        self.region_counts: list[int] = []  # regions of each image restored since the last take_region_counts()

    def take_region_counts(self) -> list[int]:
        counts, self.region_counts = self.region_counts, []
        return counts

    def __call__(self, image: np.ndarray, regions: np.ndarray | None = None) -> np.ndarray:
        """Restore ``image``; ``regions``: the user's own label map ``[H, W]`` (else the partitioner's)."""
        regions = self.cache.labels(image) if regions is None else np.asarray(regions, dtype=np.int64)
        self.region_counts.append(int(np.unique(regions).size))
        lq = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode():
            out = tiled_forward(self.module, lq, torch.from_numpy(regions)[None].to(self.device), self.tiling,
                                self.multiple)
        return out[0].float().cpu().numpy()
