"""Regions as dense on an image of any size as on the images a network was trained with.

Training partitions each whole training image with the run's partitioner, then crops patches, so the network
learns on regions of a given size in pixels. A partitioner whose region *count* is fixed per image (SLIC's
``n_segments``) makes regions larger as images grow: 100 SLIC regions on a 4096x4096 image are 64 times the
pixels of 100 on 512x512, and region attention's work grows with the square of region size (docs/scale.md).
``for_image`` keeps the regions per pixel instead:

* ``slic``: ``n_segments`` times the image's area over the reference (training) image's area, rounded, >= 1.
  An image of the reference area gets the partitioner itself, so its labels are bit for bit the same.
* ``felzenszwalb`` (``scale`` and ``min_size`` act on pixel counts) and ``grid`` (``cell_size`` pixels): their
  region size is already set in pixels; unchanged.
* ``single``: one region per image by definition (global attention); unchanged, so a tiled image attends
  globally within each tile.
* ``sam`` / ``litemedsam``: mask generators whose regions follow the anatomy (the image is resized to the
  model's input, the prompt grid is fixed); unchanged: a larger field of view gets more masks, a finer pixel
  spacing larger ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from ratlit.partition.base import Partitioner
from ratlit.partition.cache import PartitionCache
from ratlit.partition.classical import SlicPartitioner
from ratlit.utils.errors import InputError

Shape = tuple[int, int]


def median_shape(shapes: Iterable[Sequence[int]]) -> Shape | None:
    """The ``(height, width)`` of the median image by area (the lower median), or None for no images."""
    chosen = sorted((int(s[-2]) * int(s[-1]), (int(s[-2]), int(s[-1]))) for s in shapes)
    return chosen[(len(chosen) - 1) // 2][1] if chosen else None


def reference_shape(setting: object, recorded: object) -> Shape | None:
    """The reference image shape of predict's ``region_reference``: ``"train"``: the run's recorded
    ``train_image_shape`` (None where the run records none); an integer side or ``[height, width]``; None: no
    reference (the run's partitioner on every whole image, its region count fixed per image)."""
    if setting == "train":
        setting = recorded
    if setting is None:
        return None
    values = [setting, setting] if isinstance(setting, int) else setting
    if not (isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)):
        raise InputError(f"region_reference must be train, null, a side or [height, width] in pixels, "
                         f"got {setting!r}")
    return int(values[0]), int(values[1])


def for_image(partitioner: Partitioner, shape: Sequence[int], reference: Sequence[int] | None) -> Partitioner:
    """The partitioner giving an image of ``shape`` (``[..., H, W]``) the regions per pixel that ``partitioner``
    gives an image of ``reference`` (``[H, W]``; None: ``partitioner`` unchanged)."""
    if reference is None or not isinstance(partitioner, SlicPartitioner):
        return partitioner
    factor = int(shape[-2]) * int(shape[-1]) / (int(reference[-2]) * int(reference[-1]))
    count = max(1, round(partitioner.n_segments * factor))
    if count == partitioner.n_segments:
        return partitioner
    scaled = SlicPartitioner(**{**partitioner.params(), "n_segments": count})
    scaled.requested = partitioner.requested
    return scaled


class DensityKeepingCache:
    """``labels(image)``: the label map of ``for_image(partitioner, image.shape, reference)``, through a
    ``PartitionCache`` under ``root`` per scaled partitioner (each keyed by its own spec)."""

    def __init__(self, root: str | os.PathLike, partitioner: Partitioner, reference: Shape | None) -> None:
        self.root, self.partitioner = root, partitioner
        self.reference = reference
        self.caches: dict[str, PartitionCache] = {}

    def partitioner_for(self, shape: Sequence[int]) -> Partitioner:
        return for_image(self.partitioner, shape, self.reference)

    def labels(self, image: np.ndarray) -> np.ndarray:
        partitioner = self.partitioner_for(image.shape)
        if partitioner.fingerprint not in self.caches:
            self.caches[partitioner.fingerprint] = PartitionCache(self.root, partitioner)
        return self.caches[partitioner.fingerprint].labels(image)
