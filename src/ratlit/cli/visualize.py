"""Look at the regions: ``python -m ratlit.visualize task=ct partition=slic count=4 out=regions.png``.

Writes a PNG with, for each image, the LQ image (as the task displays it: CT window, PET colour map) and the
same image with region boundaries overlaid, titled with the region count. ``image=path`` shows one file instead
of a data set's split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig

from ratlit.cli.command import exit_on_user_error, hydra_command
from ratlit.data.io import read_any_image
from ratlit.partition import Partitioner
from ratlit.partition.base import as_channels_last, to_unit_range
from ratlit.utils.config import instantiate, user_path
from ratlit.utils.display import render_regions
from ratlit.utils.errors import InputError


def collect(cfg: DictConfig, datamodule: Any, partitioner: Partitioner) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if cfg.image:
        path = user_path(cfg.image)
        image = read_any_image(path, cfg.data.get("slice_axis", 2), cfg.slice_index)
        # A file is in its own units (HU, counts, 8-bit): shown between its 0.5th and 99.5th percentiles.
        shown = np.moveaxis(to_unit_range(as_channels_last(image)), -1, 0)
        return [(path.name, shown, partitioner(image))]
    chosen = datamodule.split_samples(cfg.split)[: int(cfg.count)]
    if not chosen:
        raise InputError(f"the {cfg.split} split of {cfg.task_name} is empty")
    cache = datamodule.partition_cache
    return [(s.name, lq, cache.labels(lq)) for s in chosen for lq in [s.load()[0]]]


@exit_on_user_error
def visualize(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.data)
    images = collect(cfg, datamodule, datamodule.partitioner)
    out = user_path(cfg.out)
    display = cfg.get("display") or {}
    # Data set images are in the task's normalised units and shown as its panels show them (CT window, PET map).
    value_range, window = (None, None) if cfg.image else (display.get("value_range"), display.get("window"))
    render_regions(images, out, value_range, window, display.get("cmap", "gray"))
    print(f"wrote {out}: " + ", ".join(f"{name} ({len(np.unique(labels))} regions)" for name, _, labels in images))


main = hydra_command("visualize", visualize)

if __name__ == "__main__":
    main()
