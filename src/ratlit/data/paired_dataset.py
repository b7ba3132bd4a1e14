"""LQ/HQ pairs with their label maps as a torch Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ratlit.data.paired_crop import random_paired_crop
from ratlit.data.sample import Sample
from ratlit.partition import PartitionCache
from ratlit.utils.errors import InputError


class PairedDataset(Dataset):
    """LQ/HQ pairs with their label maps; random paired crops for training, whole images otherwise."""

    def __init__(
        self,
        samples: Sequence[Sample],
        cache: PartitionCache,
        patch_size: int | None = None,
        augment: bool = False,
        in_memory: bool = True,
        length: int | None = None,
    ) -> None:
        self.samples, self.cache, self.patch_size, self.augment = list(samples), cache, patch_size, augment
        self.length = length or len(self.samples)
        self.seed = 0  # crops: a function of (seed, draw), see ResumableSampler
        self.images = [self._load(s) for s in self.samples] if in_memory else None

    def _load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lq, hq = sample.load()
        if lq.shape != hq.shape:
            raise InputError(f"{sample.name}: LQ shape {lq.shape} and HQ shape {hq.shape} do not pair")
        if self.patch_size and min(lq.shape[-2:]) < self.patch_size:
            raise InputError(
                f"{sample.name} is {lq.shape[-2]}x{lq.shape[-1]}, smaller than patch_size {self.patch_size}; "
                f"lower data.patch_size"
            )
        return lq, hq, self.cache.labels(lq).astype(np.int32)  # int32 halves the in-memory label maps

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index % len(self)``; a training crop is drawn from ``(seed, index)`` alone (``index`` may count
        on across epochs: ResumableSampler gives ``epoch * len + i``), so a resumed run draws the same crops.
        ``index``: the item's position, for counting each image once across processes."""
        sample = self.samples[index % len(self.samples)]
        lq, hq, regions = self.images[index % len(self.samples)] if self.images is not None else self._load(sample)
        lq_t, hq_t, regions_t = torch.from_numpy(lq), torch.from_numpy(hq), torch.from_numpy(regions).long()
        if self.patch_size:
            seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            lq_t, hq_t, regions_t = random_paired_crop(lq_t, hq_t, regions_t, self.patch_size, self.augment, generator)
        return {"lq": lq_t, "hq": hq_t, "regions": regions_t, "name": sample.name, "group": sample.group,
                "index": index % self.length}
