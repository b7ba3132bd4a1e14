"""Look at the regions: ``python -m ratlit.visualize task=ct partition=slic count=4 out=regions.png``.

Writes a PNG with, for each image, the LQ image and the same image with region boundaries overlaid,
titled with the region count. ``image=path`` shows one file instead of a data set's split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from ratlit.config import CONF_DIR, exit_on_user_error, instantiate, prepare_argv
from ratlit.files import atomic_output
from ratlit.partition import Partitioner
from ratlit.partition.base import as_channels_last, to_unit_range


def load_any_image(path: Path, slice_axis: int = 2, slice_index: int | None = None) -> np.ndarray:
    """A 2D image ``[C, H, W]`` from a PNG/TIFF/JPEG, a DICOM file or a NIfTI volume (one slice of it)."""
    from ratlit.data.io import IMAGE_SUFFIXES, is_nifti, read_dicom, read_image, read_volume

    if not path.exists():
        raise ValueError(f"image {path} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)
    if is_nifti(path):
        volume = read_volume(path)
        index = volume.shape[slice_axis] // 2 if slice_index is None else int(slice_index)
        if not 0 <= index < volume.shape[slice_axis]:
            raise ValueError(f"slice_index {index} is outside {path} ({volume.shape[slice_axis]} slices on axis {slice_axis})")
        return np.take(volume, index, axis=slice_axis)[None]
    return read_dicom(path).pixels[None]


def render(images: list[tuple[str, np.ndarray, np.ndarray]], out: Path) -> None:
    """Save a figure: one row per ``(name, image [C, H, W], labels [H, W])``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import mark_boundaries

    fig, axes = plt.subplots(len(images), 2, figsize=(8, 4 * len(images)), squeeze=False)
    for row, (name, image, labels) in zip(axes, images):
        shown = to_unit_range(as_channels_last(image))
        rgb = np.repeat(shown, 3, axis=-1) if shown.shape[-1] == 1 else shown
        row[0].imshow(rgb)
        row[0].set_title(name)
        row[1].imshow(mark_boundaries(rgb, labels, color=(1, 0.2, 0.2)))
        row[1].set_title(f"{len(np.unique(labels))} regions")
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def collect(cfg: DictConfig, datamodule: Any, partitioner: Partitioner) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if cfg.image:
        path = Path(cfg.image).expanduser()
        if not path.is_absolute():
            path = Path(get_original_cwd()) / path
        image = load_any_image(path, cfg.data.get("slice_axis", 2), cfg.slice_index)
        return [(path.name, image, partitioner(image))]
    chosen = datamodule.split_samples(cfg.split)[: int(cfg.count)]
    if not chosen:
        raise ValueError(f"the {cfg.split} split of {cfg.task_name} is empty")
    cache = datamodule.partition_cache
    return [(s.name, lq, cache.labels(lq)) for s in chosen for lq in [s.load()[0]]]


@hydra.main(config_path=str(CONF_DIR), config_name="visualize", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.data)
    images = collect(cfg, datamodule, datamodule.partitioner)
    out = Path(cfg.out).expanduser()
    if not out.is_absolute():
        out = Path(get_original_cwd()) / out
    render(images, out)
    print(f"wrote {out}: " + ", ".join(f"{name} ({len(np.unique(labels))} regions)" for name, _, labels in images))


if __name__ == "__main__":
    import sys

    sys.argv = prepare_argv(sys.argv)  # data.root=~/scans: Hydra's lexer rejects an unquoted ~
    main()
