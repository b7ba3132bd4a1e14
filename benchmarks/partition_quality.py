"""Region quality of LiteMedSAM prompt grids beside SLIC on the embedded CT / PET sets and the pathology tile.

    nice -n 10 python benchmarks/partition_quality.py --count 3 --out experiments/results/partition_litemedsam

Per image and partitioner: regions, sum(n_i^2)/N^2 (R-MSA's share of global attention's work), the largest
region's share, boundary precision (share of region-boundary pixels within 2 px of a Canny edge of the
noise-free HQ image, DESIGN.md) and boundary recall (share of those edges within 2 px of a boundary), and
CPU seconds (process time, both threads). LiteMedSAM: one embedding per image; every box size's masks are
decoded once and each variant (box sizes x thresholds) is selected from them, so a variant's time is the
embedding plus its own prompts. The costly variants (32 px boxes, the point grid) run on each task's first
image only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from scipy import ndimage
from skimage.feature import canny
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from ratlit.partition import SlicPartitioner, labels_from_masks
from ratlit.partition.base import as_channels_last, to_unit_range
from ratlit.partition.litemedsam import LiteMedSamPartitioner, box_grid, point_grid
from ratlit.utils.config import CONF_DIR, instantiate

TOLERANCE_PX = 2
BOX_SETS = {"boxes 64-256": (64, 128, 256)}
FIRST_IMAGE_BOX_SETS = {"boxes 32-256": (32, 64, 128, 256)}
THRESHOLDS = [(0.5, 0.6), (0.7, 0.8), (0.85, 0.9)]  # (predicted IoU, stability score)


def edges_of(hq: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    grey = to_unit_range(as_channels_last(hq)).mean(-1)
    if grey.shape != shape:  # super-resolution: the HQ image is larger than the partitioned LQ one
        grey = resize(grey, shape, anti_aliasing=True)
    return canny(grey, sigma=2.0)


def metrics(labels: np.ndarray, edges: np.ndarray, seconds: float) -> dict[str, float]:
    counts = np.bincount(labels.ravel()).astype(np.float64)
    n = labels.size
    boundary = find_boundaries(labels, mode="inner")
    near_edge = ndimage.distance_transform_edt(~edges) <= TOLERANCE_PX
    near_boundary = ndimage.distance_transform_edt(~boundary) <= TOLERANCE_PX
    return {
        "regions": float(len(counts)),
        "sum_n2_over_N2": float((counts**2).sum() / n**2),
        "largest_share": float(counts.max() / n),
        "boundary_precision": float(near_edge[boundary].mean()) if boundary.any() else float("nan"),
        "boundary_recall": float(near_boundary[edges].mean()) if edges.any() else float("nan"),
        "seconds": seconds,
    }


def pick(samples: list, count: int) -> list:
    if len(samples) <= count:
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, count).round().astype(int)]


def images(task: str, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("precompute", overrides=[f"task={task}", "partition=slic"])
    datamodule = instantiate(cfg.data)
    chosen = pick(datamodule.split_samples("test"), count)
    return [(f"{task}:{s.name}", *s.load()) for s in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["ct", "pet", "pathology"])
    parser.add_argument("--count", type=int, default=2, help="test images per task (evenly spaced)")
    parser.add_argument("--points-per-side", type=int, default=8, help="point grid, tried on each task's first image")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json and table.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    slic = SlicPartitioner(n_segments=100)
    lite = LiteMedSamPartitioner(device="cpu")
    rows: list[dict] = []
    for task in args.tasks:
        for index, (name, lq, hq) in enumerate(images(task, args.count)):
            pixels = as_channels_last(lq)
            shape = pixels.shape[:2]
            edges = edges_of(hq, shape)
            start = time.process_time()
            labels = slic(lq)
            rows.append({"image": name, "method": "slic 100", **metrics(labels, edges, time.process_time() - start)})
            start = time.process_time()
            embedding, resized = lite.embed(pixels)
            embed_s = time.process_time() - start
            decoded = {}
            box_sets = {**BOX_SETS, **(FIRST_IMAGE_BOX_SETS if index == 0 else {})}
            for size in sorted({s for sizes in box_sets.values() for s in sizes}):
                start = time.process_time()
                boxes = box_grid(*resized, [size], lite.box_overlap)
                decoded[size] = (*lite.decode(embedding, resized, shape, boxes), time.process_time() - start,
                                 len(boxes))
            variants = {}
            for label, sizes in box_sets.items():
                parts = [decoded[s] for s in sizes]
                variants[label] = tuple(torch.cat([p[i] for p in parts]) for i in range(3)) + (
                    embed_s + sum(p[3] for p in parts), sum(p[4] for p in parts))
            if index == 0:
                start = time.process_time()
                points = point_grid(*resized, args.points_per_side)
                masks = lite.decode(embedding, resized, shape, points)
                variants[f"points {args.points_per_side}x{args.points_per_side}"] = (
                    *masks, embed_s + time.process_time() - start, len(points))
            for label, (masks, iou, stability, seconds, prompts) in variants.items():
                for iou_t, stab_t in THRESHOLDS:
                    lite.pred_iou_thresh, lite.stability_score_thresh = iou_t, stab_t
                    kept = lite.select(masks, iou, stability)
                    labels = labels_from_masks(kept, shape, lite.min_region_area)
                    row = {"image": name, "method": f"litemedsam {label} iou>={iou_t} stab>={stab_t}",
                           "prompts": prompts, "masks_kept": len(kept), **metrics(labels, edges, seconds)}
                    rows.append(row)
            print(f"{name}: done ({embed_s:.1f} s embedding)", flush=True)
    summary = summarise(rows)
    print(summary)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
        (args.out / "table.md").write_text(summary)


def summarise(rows: list[dict]) -> str:
    keys = ["regions", "sum_n2_over_N2", "largest_share", "boundary_precision", "boundary_recall", "seconds"]
    lines = ["| task | method | images | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 3)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["image"].split(":")[0], row["method"]), []).append(row)
    for (task, method), group in groups.items():
        values = [np.nanmean([r[k] for r in group]) for k in keys]
        lines.append(f"| {task} | {method} | {len(group)} | " + " | ".join(f"{v:.3g}" for v in values) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
