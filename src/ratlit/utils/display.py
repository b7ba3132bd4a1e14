"""How images are shown: the task's display (value range, window, colour map) applied to a normalised image,
the training panels (LQ | restored | HQ | |error| | regions) and the region figure of ``ratlit.visualize``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ratlit.utils.errors import InputError
from ratlit.utils.files import atomic_output


def display_image(x: Tensor, value_range: Sequence[float] | None = None, window: Sequence[float] | None = None,
                  cmap: str = "gray") -> np.ndarray:
    """A ``[C, H, W]`` image in the task's normalised units as ``[H, W, 3]`` RGB in [0, 1] for display.

    ``value_range`` ``(lo, hi)``: the physical values that 0 and 1 stand for (CT: HU). ``window``
    ``(level, width)`` in those units (CT soft tissue: 40, 400); None shows [0, 1]. Single-channel images get
    the colour map ``cmap`` (matplotlib name); RGB images are shown as they are.
    """
    x = x.detach().float().cpu()
    if x.shape[0] >= 3:
        return x[:3].clamp(0, 1).permute(1, 2, 0).numpy()
    return colourise(to_display_scale(x[0], value_range, window).numpy(), cmap)


def to_display_scale(x: Tensor, value_range: Sequence[float] | None, window: Sequence[float] | None) -> Tensor:
    """Normalised values to [0, 1] of the display window (no window: clamped to [0, 1])."""
    if window is not None:
        if value_range is None:
            raise InputError("a display window needs value_range, the physical values of 0 and 1")
        lo, hi = float(value_range[0]), float(value_range[1])
        level, width = float(window[0]), float(window[1])
        if width <= 0:
            raise InputError(f"display window width must be positive, got {width}")
        x = (lo + x * (hi - lo) - (level - width / 2)) / width
    return x.clamp(0, 1)


def colourise(gray: np.ndarray, cmap: str = "gray") -> np.ndarray:
    """``[H, W]`` in [0, 1] through a matplotlib colour map: ``[H, W, 3]``."""
    import matplotlib

    if cmap not in matplotlib.colormaps:
        raise InputError(f"unknown colour map {cmap!r}; e.g. gray, hot, inferno, magma, viridis")
    return matplotlib.colormaps[cmap](gray)[..., :3]


def error_scale(value_range: Sequence[float] | None, window: Sequence[float] | None) -> float:
    """Factor from normalised error to the display window's scale (1 without a window)."""
    if window is None or value_range is None:
        return 1.0
    return (float(value_range[1]) - float(value_range[0])) / float(window[1])


def render_panels(rows: list[dict[str, Any]], value_range: Sequence[float] | None = None,
                  window: Sequence[float] | None = None, cmap: str = "gray", error_gain: float = 4.0) -> np.ndarray:
    """Rows of LQ | restored | HQ | |error| | regions, each column titled (with the image's PSNR), as one
    ``[H, W, 3]`` uint8 picture. A row: ``lq``, ``restored``, ``hq`` ``[C, H, W]``, ``regions`` ``[H, W]``,
    ``psnr`` and ``input_psnr`` (dB) and optionally ``name``. The error is shown on the display scale (the
    window's width with a window), times ``error_gain``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import mark_boundaries

    height, width = rows[0]["lq"].shape[-2:]
    size = 2.6
    fig, axes = plt.subplots(len(rows), 5, figsize=(5 * size, len(rows) * size * height / width + 0.45 * len(rows)),
                             squeeze=False)
    scale = error_gain * error_scale(value_range, window)
    for axs, row in zip(axes, rows, strict=True):
        lq = display_image(row["lq"], value_range, window, cmap)
        error = (row["restored"].float() - row["hq"].float()).abs().mean(0).cpu() * scale
        pictures = [
            lq,
            display_image(row["restored"], value_range, window, cmap),
            display_image(row["hq"], value_range, window, cmap),
            colourise(error.clamp(0, 1).numpy(), "gray"),
            mark_boundaries(lq, row["regions"].cpu().numpy(), color=(1, 0.2, 0.2)),
        ]
        regions = int(row["regions"].unique().numel())
        gain = f" x{error_gain:g}" if error_gain != 1 else ""
        titles = [f"LQ {row['input_psnr']:.2f} dB", f"restored {row['psnr']:.2f} dB", "HQ", f"|error|{gain}",
                  f"regions ({regions})"]
        for ax, picture, title in zip(axs, pictures, titles, strict=True):
            ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if row.get("name"):
            axs[0].set_ylabel(str(row["name"])[:40], fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture


def render_regions(images: list[tuple[str, np.ndarray, np.ndarray]], out: Path,
                   value_range: Sequence[float] | None = None, window: Sequence[float] | None = None,
                   cmap: str = "gray") -> None:
    """Save a figure: one row per ``(name, image [C, H, W] in the task's normalised units, labels [H, W])``,
    the image as the task displays it, and with the region boundaries overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from skimage.segmentation import mark_boundaries

    fig, axes = plt.subplots(len(images), 2, figsize=(8, 4 * len(images)), squeeze=False)
    for row, (name, image, labels) in zip(axes, images, strict=True):
        shown = display_image(torch.as_tensor(np.asarray(image, dtype=np.float32)), value_range, window, cmap)
        row[0].imshow(shown)
        row[0].set_title(name)
        row[1].imshow(mark_boundaries(shown, labels, color=(1, 0.2, 0.2)))
        row[1].set_title(f"{len(np.unique(labels))} regions")
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    with atomic_output(out, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
