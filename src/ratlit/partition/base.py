"""The partitioner interface and the image conversions partitioners share."""

from __future__ import annotations

import hashlib
import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ratlit.partition.postprocess import compact_labels
from ratlit.utils.errors import InputError


def as_channels_last(image: Any, name: str = "image") -> np.ndarray:
    """A ``[H, W]`` or channel-first ``[C, H, W]`` (C = 1 or 3) image, numpy or torch, -> float64 ``[H, W, C]``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"{name} must be [H, W] or channel-first [C, H, W] with C in (1, 3), got shape {image.shape}")
    if min(image.shape[1:]) < 1:
        raise InputError(f"{name} is empty: shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise InputError(f"{name} must be numeric, got dtype {image.dtype}")
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return np.moveaxis(image, 0, -1)


def to_unit_range(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Clip ``[H, W, C]`` intensities to a window and scale it to [0, 1].

    ``window=(low, high)`` in the image's own units (e.g. HU, or [0, 1] for normalised data); ``None``
    takes the 0.5th and 99.5th percentiles of the image, which suits any bit depth or dose.
    """
    if window is None:
        low, high = np.percentile(image, [0.5, 99.5])
    else:
        low, high = (float(w) for w in window)
        if not high > low:
            raise InputError(f"window must be (low, high) with high > low, got {window}")
    if high <= low:  # a constant image
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def to_unit_rgb(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """``[H, W, C]`` -> RGB ``[H, W, 3]`` in [0, 1] (``to_unit_range``); grey images are repeated over 3 channels."""
    unit = to_unit_range(image, window)
    return np.repeat(unit, 3, axis=-1) if unit.shape[-1] == 1 else unit


def to_uint8_rgb(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """``[H, W, C]`` -> the 8-bit RGB ``[H, W, 3]`` SAM expects (see ``to_unit_rgb``)."""
    return np.round(to_unit_rgb(image, window) * 255).astype(np.uint8)


def as_window(window: Any) -> tuple[float, float] | None:
    """A partitioner's ``window`` argument (None or a (low, high) pair from a config) as floats."""
    return None if window is None else (float(window[0]), float(window[1]))


def resolve_device(device: str) -> str:
    """``"auto"``: the GPU when there is one, else the CPU; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def file_digest(path: Path) -> str:
    """First 16 hex digits of a file's SHA-256 (weights in a partitioner's cache spec)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


class Partitioner(ABC):
    """Image -> region label map. ``partitioner(image) -> int64 [H, W]`` with ids ``0..L-1``.

    ``image`` is ``[H, W]`` or channel-first ``[C, H, W]`` (numpy or torch) in any intensity range.
    ``spec`` describes the partitioner completely (it keys the cache and is recorded with every run).
    """

    name: ClassVar[str]
    requested: str | None = None  # set when this partitioner stands in for another one

    def __call__(self, image: Any) -> np.ndarray:
        pixels = as_channels_last(image)
        labels = np.asarray(self._partition(pixels))
        if labels.shape != pixels.shape[:2]:
            raise RuntimeError(f"{self.name} returned labels of shape {labels.shape} "
                               f"for an image of {pixels.shape[:2]}")
        return compact_labels(labels)

    @abstractmethod
    def _partition(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, C]`` float64 -> integer labels ``[H, W]`` (any ids)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Everything that changes the output, JSON-serialisable."""

    @property
    def spec(self) -> dict[str, Any]:
        spec = {"name": self.name, **self.params()}
        if self.requested:
            spec["requested"] = self.requested
        return spec

    @property
    def fingerprint(self) -> str:
        params = {"name": self.name, **self.params()}  # what was requested does not change the labels
        return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


def stand_in(fallback: Partitioner | Callable[[], Partitioner], requested: str, reason: str) -> Partitioner:
    """Build ``fallback`` in place of ``requested``: say so loudly and record what was requested."""
    partitioner = fallback if isinstance(fallback, Partitioner) else fallback()
    partitioner.requested = requested  # down a chain the outermost call runs last: the first request wins
    message = (
        f"{requested.upper()} PARTITIONER NOT AVAILABLE, USING {partitioner.name.upper()} INSTEAD: {reason} "
        f"The run records partition={partitioner.name} (requested: {partitioner.requested}); "
        f"do not compare it with {partitioner.requested} runs."
    )
    # Once: a logged copy beside the warning printed it twice (the run's config records partition_used.requested).
    warnings.warn(message, stacklevel=3)
    return partitioner
