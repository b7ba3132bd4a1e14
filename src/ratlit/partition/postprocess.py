"""Eq. 1's post-processing: overlapping SAM masks -> one non-overlapping integer label map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ratlit.utils.errors import InputError


def _mask_array(mask: Mapping, index: int, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(mask, Mapping) or "segmentation" not in mask:
        raise ValueError(f"masks[{index}] must be a dict with a 'segmentation' entry (SAM's output), "
                         f"got {type(mask).__name__}")
    seg = mask["segmentation"]
    if isinstance(seg, Mapping):  # SAM's 'uncompressed_rle' output mode: column-major run lengths
        if "counts" not in seg or "size" not in seg or not isinstance(seg["counts"], (list, tuple)):
            raise InputError(f"masks[{index}]['segmentation'] is an RLE this reader does not know "
                             "(need size + list counts)")
        h, w = seg["size"]
        flat = np.zeros(h * w, dtype=bool)
        pos, value = 0, False
        for count in seg["counts"]:
            flat[pos : pos + count] = value
            pos, value = pos + count, not value
        seg = flat.reshape(w, h).T
    seg = np.asarray(seg)
    if seg.shape != shape:
        raise InputError(f"masks[{index}]['segmentation'] has shape {seg.shape}, expected {shape}")
    return seg.astype(bool, copy=False)


def labels_from_masks(masks: Sequence[Mapping], shape: tuple[int, int], min_region_area: int = 0) -> np.ndarray:
    """SAM automatic masks -> int64 label map ``[H, W]`` with contiguous ids ``0..L-1``.

    A pixel covered by several masks goes to the smallest of them (the finest region); pixels covered by
    none form one background region. Masks smaller than ``min_region_area`` pixels are ignored (their
    pixels fall to the next mask covering them, or to the background). Ids are ordered by the regions'
    first pixel in raster order, so the result does not depend on the order of ``masks``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape}")
    arrays = [_mask_array(m, i, shape) for i, m in enumerate(masks)]
    areas = np.array([a.sum() for a in arrays], dtype=np.int64)
    labels = np.zeros(shape, dtype=np.int64)  # 0: covered by no mask
    # Paint largest first so every pixel ends with the smallest mask covering it; ties keep list order.
    for rank, index in enumerate(np.argsort(-areas, kind="stable"), start=1):
        if areas[index] >= max(min_region_area, 1):
            labels[arrays[index]] = rank
    return compact_labels(labels)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber a label map to ``0..L-1`` in order of each region's first pixel (raster order)."""
    flat = np.asarray(labels).ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse].reshape(np.shape(labels)).astype(np.int64)
