"""The SAM branch of RAT: Segment Anything's automatic mask generator + Eq. 1's post-processing.

Checkpoints: the official SAM ViT-B / ViT-L / ViT-H files (``sam_vit_b_01ec64.pth`` ...) or MedSAM's
(SAM ViT-B format), given as ``checkpoint=`` or the ``RATLIT_SAM_CHECKPOINT`` environment variable.
Nothing is downloaded. The network never sees the 8-bit RGB image made for SAM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ratlit.partition._torchvision_compat import import_segment_anything
from ratlit.partition.base import Partitioner, as_window, file_digest, resolve_device, stand_in, to_uint8_rgb
from ratlit.partition.postprocess import labels_from_masks
from ratlit.utils.errors import InputError
from ratlit.utils.files import load_weights

log = logging.getLogger(__name__)

CHECKPOINT_ENV = "RATLIT_SAM_CHECKPOINT"
OTHER_PARTITIONERS = "slic, felzenszwalb, grid or single"


def _registry_builder(model_type: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return import_segment_anything().sam_model_registry[model_type](checkpoint=None)

    return build


# model_type -> builder of an untrained SAM; tests register tiny architectures here.
SAM_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    name: _registry_builder(name) for name in ("vit_b", "vit_l", "vit_h")
}


class SamCheckpointNotFoundError(FileNotFoundError, InputError):
    """No SAM checkpoint was given, or the given path does not exist."""


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """The checkpoint path from the argument or ``$RATLIT_SAM_CHECKPOINT``; raises if there is none."""
    chosen = checkpoint if checkpoint not in (None, "") else os.environ.get(CHECKPOINT_ENV) or None
    how = (
        f"Download a SAM checkpoint (e.g. sam_vit_b_01ec64.pth, or a MedSAM ViT-B file) on a machine with "
        f"internet, then set partition.checkpoint=/path/to/file or {CHECKPOINT_ENV}=/path/to/file; "
        f"or choose another partitioner: partition={OTHER_PARTITIONERS}."
    )
    if chosen is None:
        raise SamCheckpointNotFoundError(f"No SAM checkpoint given. {how}")
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise SamCheckpointNotFoundError(f"SAM checkpoint not found: {path}. {how}")
    return path


def load_sam(model_type: str, checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Build SAM ``model_type`` and load ``checkpoint`` safely (``weights_only=True``)."""
    if model_type not in SAM_BUILDERS:
        raise InputError(f"unknown SAM model_type {model_type!r}; choose one of {sorted(SAM_BUILDERS)}")
    path = resolve_checkpoint(checkpoint)
    state = load_weights(path, "SAM checkpoint")
    for wrapper in ("model", "state_dict"):  # training checkpoints (e.g. MedSAM's) wrap the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    model = SAM_BUILDERS[model_type]()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise InputError(
            f"SAM checkpoint {path} does not fit model_type {model_type!r} ({first_line}); "
            f"is it a {sorted(SAM_BUILDERS)} checkpoint of another size?"
        ) from err
    return model.to(device).eval()


class SamPartitioner(Partitioner):
    """SAM automatic masks on the LQ image -> label map (Eq. 1). Runs on the GPU when there is one.

    ``window`` maps intensities to 8-bit (None: 0.5-99.5th percentiles per image). The generator knobs are
    ``segment_anything.SamAutomaticMaskGenerator``'s; ``min_region_area`` drops masks smaller than that
    many pixels in the post-processing (SAM's own ``min_mask_region_area`` needs OpenCV).
    """

    name = "sam"

    def __init__(
        self,
        model_type: str = "vit_b",
        checkpoint: str | None = None,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        min_region_area: int = 0,
        window: tuple[float, float] | list[float] | None = None,
        device: str = "auto",
    ) -> None:
        device = resolve_device(device)
        self.model_type = model_type
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.checkpoint_digest = file_digest(self.checkpoint)
        self.window = as_window(window)
        self.min_region_area = int(min_region_area)
        self.generator_kwargs = {
            "points_per_side": int(points_per_side),
            "points_per_batch": int(points_per_batch),
            "pred_iou_thresh": float(pred_iou_thresh),
            "stability_score_thresh": float(stability_score_thresh),
            "box_nms_thresh": float(box_nms_thresh),
            "crop_n_layers": int(crop_n_layers),
        }
        self.device = device
        model = load_sam(model_type, self.checkpoint, device)
        self.generator = import_segment_anything().SamAutomaticMaskGenerator(model, **self.generator_kwargs)
        log.info("SAM %s loaded from %s on %s", model_type, self.checkpoint, device)

    def _partition(self, image: np.ndarray) -> np.ndarray:
        masks = self.generator.generate(to_uint8_rgb(image, self.window))
        return labels_from_masks(masks, image.shape[:2], self.min_region_area)

    def params(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "checkpoint_sha256": self.checkpoint_digest,
            "window": self.window,
            "min_region_area": self.min_region_area,
            **self.generator_kwargs,
        }

    @property
    def spec(self) -> dict[str, Any]:
        return {**super().spec, "checkpoint": str(self.checkpoint)}


def build_sam_partitioner(
    fallback: Partitioner | Callable[[], Partitioner] | None = None, **sam_kwargs: Any
) -> Partitioner:
    """``SamPartitioner(**sam_kwargs)``; without a checkpoint, ``fallback`` (loudly) if one is configured.

    ``fallback`` is a partitioner or a builder of one (Hydra ``_partial_``), so a chain (SAM, else
    LiteMedSAM, else SLIC) loads only what runs. Only a *missing* checkpoint falls back; an unreadable or
    mismatched one is always an error.
    """
    try:
        return SamPartitioner(**sam_kwargs)
    except SamCheckpointNotFoundError as err:
        if fallback is None:
            raise
        return stand_in(fallback, "sam", str(err))
