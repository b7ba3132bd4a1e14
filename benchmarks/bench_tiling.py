"""predict on one CT slice of 512 ... 4096 pixels a side: wall time and peak resident memory, tiled or whole.

Each size runs ``ratlit.inference.restore.restore_paths`` (read, partition the whole slice, restore, write a NIfTI) in a
fresh subprocess, so its peak RSS (``ru_maxrss``, the whole process: Python, torch and the model included) is
its own; the partition cache starts empty. ``--ckpt``: a run's checkpoint (e.g. ``experiment=smoke``); without
it, an untrained paper-size RAT checkpoint (task ct, partition slic) is built: time and memory do not depend
on the weights. ``--malloc keep system`` measures with ratlit's allocator setting (ratlit.allocator) and with
glibc's defaults; ``--max-tile 0`` runs whole images; ``--region-impl dense`` swaps the R-MSA kernel;
``--override`` adds Hydra overrides to the paper-size checkpoint's config (e.g. ``partition.n_segments=200``).
The paper-size checkpoint records ``train_image_shape`` 512x512 (the CT task's slices), so predict scales SLIC's
region count with the image's area (ratlit.partition.density, docs/scale.md); ``--region-reference none``
partitions every size with the recorded count, as predict did before.

    python benchmarks/bench_tiling.py [--ckpt run/checkpoints/best.ckpt] [--sizes 512 1024 2048 4096]
        [--max-tile 512] [--overlap 64] [--malloc keep system] [--region-impl auto|dense] [--timeout 900]
        [--override partition.n_segments=200 ...] [--region-reference train|none|SIDE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def ct_slice(side: int, seed: int = 0) -> np.ndarray:
    """A noisy CT-like slice in HU ``[side, side]``: a water disc with bone and soft-tissue ellipses."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:side, :side] / side - 0.5
    image = np.where(x**2 + y**2 < 0.2, 0.0, -1000.0)
    image += np.where((x / 0.3) ** 2 + ((y - 0.1) / 0.15) ** 2 < 1, 60.0, 0.0)
    image += np.where(((x + 0.2) / 0.05) ** 2 + (y / 0.08) ** 2 < 1, 900.0, 0.0)
    return (image + rng.normal(0, 40, image.shape)).astype(np.float32)


def paper_checkpoint(path: Path, region_impl: str, overrides: list[str]) -> Path:
    """An untrained paper-size RAT checkpoint (task ct, partition slic), as predict reads a run's."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ratlit.utils.config import CONF_DIR, instantiate

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["task=ct", "partition=slic", f"model.net.region_impl={region_impl}",
                                          f"run_dir={path.parent}", f"paths.cache_dir={path.parent / 'cache'}",
                                          *overrides])
    module = instantiate(cfg.model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["partition_used"] = instantiate(cfg.partition).spec
    resolved["train_image_shape"] = [512, 512]  # what training on the CT task's slices records
    torch.save({"state_dict": module.state_dict(), "ratlit_config": OmegaConf.to_yaml(resolved)}, path)
    return path


def child(args: argparse.Namespace) -> None:
    """One measurement, in this process: prints a JSON line."""
    import resource

    import torch

    from ratlit.inference.restore import restore_paths
    from ratlit.models.tiling import Tiling
    from ratlit.utils.allocator import OPT_OUT

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    start = time.perf_counter()
    reference = {"train": "train", "none": None}.get(args.region_reference) or int(args.region_reference)
    restore_paths(Path(args.ckpt), work / f"ct{args.size}.nii", work / f"out{args.size}", accelerator="cpu",
                  cache_dir=work / f"cache{os.getpid()}", tiling=Tiling(args.max_tile or None, args.overlap),
                  region_reference=reference)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    # restore_paths sets malloc as predict does (ratlit.models.tiling.keeps_freed_memory), unless RATLIT_MALLOC=system
    kept = os.environ.get(OPT_OUT) != "system" and bool(args.max_tile) and args.region_impl != "dense"
    print(json.dumps({"size": args.size, "seconds": seconds, "peak_gib": peak, "malloc_kept": kept}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--max-tile", type=int, default=512, help="0: whole images")
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--malloc", nargs="+", default=["keep"], choices=["keep", "system"])
    parser.add_argument("--region-impl", default="auto", help="paper-size checkpoint only")
    parser.add_argument("--override", nargs="*", default=[], help="paper-size checkpoint only: Hydra overrides")
    parser.add_argument("--region-reference", default="train",
                        help="predict's region_reference: train (the checkpoint's), none, or a side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per size before it is stopped")
    parser.add_argument("--child-size", dest="size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size is not None:
        return child(args)
    import nibabel as nib

    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as tmp:
        work = Path(tmp)
        ckpt = args.ckpt or str(paper_checkpoint(work / "paper_rat.ckpt", args.region_impl, args.override))
        tile = f"max_tile {args.max_tile}, overlap {args.overlap}" if args.max_tile else "whole images"
        name = args.ckpt or " ".join(["paper-size RAT (untrained)", *args.override])
        name += f", region_reference {args.region_reference}"
        print(f"checkpoint {name}, {tile}, {args.threads} threads\n")
        print("| size | malloc | seconds | peak RSS (GiB) |\n|---|---|---|---|", flush=True)
        for size in args.sizes:
            nib.save(nib.Nifti1Image(ct_slice(size)[..., None], np.eye(4)), str(work / f"ct{size}.nii"))
            for malloc in args.malloc:
                command = [sys.executable, __file__, "--ckpt", ckpt, "--child-size", str(size), "--work", tmp,
                           "--max-tile", str(args.max_tile), "--overlap", str(args.overlap),
                           "--threads", str(args.threads), "--region-impl", args.region_impl,
                           "--region-reference", args.region_reference]
                env = {**os.environ, "RATLIT_MALLOC": malloc, "OMP_NUM_THREADS": str(args.threads)}
                try:
                    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"| {size} | {malloc} | > {args.timeout:.0f} (stopped) | |", flush=True)
                    continue
                if done.returncode:
                    tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"| {size} | {malloc} | failed ({done.returncode}): {tail} | |", flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                kept = "" if row["malloc_kept"] or malloc == "system" else " (predict: not kept)"
                print(f"| {size} | {malloc}{kept} "
                      f"| {row['seconds']:.1f} | {row['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
