"""Import ``segment_anything`` where torchvision cannot be imported.

segment_anything imports four torchvision functions at module load: ``batched_nms`` and ``box_area``
(mask de-duplication) and ``resize`` / ``to_pil_image`` (resizing the input to 1024 px). A CPU-only torch
wheel next to PyPI's torchvision (built for the CUDA wheel) fails to import (``torchvision::nms does not
exist``). When, and only when, the real torchvision is unusable, this module provides those four
functions, bound into segment_anything during its import and removed from ``sys.modules`` right after,
so no other library ever sees a stand-in torchvision. ``batched_nms`` is torchvision's where it imports, else
the stand-in's greedy NMS.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import types

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[N, 4]`` boxes in (x1, y1, x2, y2) form."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_iou(boxes: Tensor) -> Tensor:
    area = box_area(boxes)
    top_left = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (area[:, None] + area[None, :] - inter)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category ``idxs``: kept indices by decreasing score. torchvision's where it imports,
    else :func:`greedy_batched_nms`."""
    if torchvision_usable():
        from torchvision.ops import batched_nms as torchvision_batched_nms

        return torchvision_batched_nms(boxes.float(), scores.float(), idxs, iou_threshold)
    return greedy_batched_nms(boxes, scores, idxs, iou_threshold)


def greedy_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each category ``idxs``; kept indices by decreasing score (torchvision's contract)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    # Shift each category far apart so boxes of different categories never overlap (torchvision's trick).
    shifted = boxes.float() + (idxs.to(torch.float32) * (boxes.float().max() + 1))[:, None]
    order = scores.argsort(descending=True)
    iou = _box_iou(shifted[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def to_pil_image(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(image))


def resize(image, size: list[int] | tuple[int, int]):
    """Bilinear resize of a PIL image to ``(height, width)``."""
    from PIL import Image

    height, width = size
    return image.resize((width, height), Image.BILINEAR)


@functools.cache
def torchvision_usable() -> bool:
    """Whether torchvision imports beside this torch build (asked once per process)."""
    try:
        importlib.import_module("torchvision.ops.boxes")
        importlib.import_module("torchvision.transforms.functional")
        return True
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def import_segment_anything() -> types.ModuleType:
    """Import and return ``segment_anything``, standing in for torchvision only if it is unusable."""
    if "segment_anything" in sys.modules or torchvision_usable():
        return importlib.import_module("segment_anything")
    log.info("torchvision is unusable with this torch build; segment_anything gets ratlit's NMS and resize")
    modules = {
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.ops": types.ModuleType("torchvision.ops"),
        "torchvision.ops.boxes": types.ModuleType("torchvision.ops.boxes"),
        "torchvision.transforms": types.ModuleType("torchvision.transforms"),
        "torchvision.transforms.functional": types.ModuleType("torchvision.transforms.functional"),
    }
    modules["torchvision.ops.boxes"].batched_nms = greedy_batched_nms
    modules["torchvision.ops.boxes"].box_area = box_area
    modules["torchvision.transforms.functional"].resize = resize
    modules["torchvision.transforms.functional"].to_pil_image = to_pil_image
    sys.modules.update(modules)
    try:
        return importlib.import_module("segment_anything")
    finally:
        for name in modules:
            sys.modules.pop(name, None)
