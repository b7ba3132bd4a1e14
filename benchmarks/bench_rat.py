"""Paper-size RAT on CPU: one training step on a 256x256 patch and whole-image inference at 512x512.

Partitions are SLIC (about 80 regions) on scikit-image's camera image, as in bench_attention.py.
Each case runs in a fresh subprocess; peak memory is the process's peak RSS above its start.

    python benchmarks/bench_rat.py [--threads 2] [--attention rmsa]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch
from bench_attention import peak_rss_reset, rss


def slic_regions(side: int) -> torch.Tensor:
    from skimage import data, segmentation, transform

    image = transform.resize(data.camera(), (side, side), anti_aliasing=True)
    labels = segmentation.slic(image, n_segments=100 * (side // 256) ** 2, compactness=0.1, channel_axis=None)
    return torch.from_numpy(labels.astype(np.int64))[None], torch.from_numpy(image).float()[None, None]


def run_case(case: str, attention: str) -> dict:
    from ratlit.losses import FocalRegionLoss
    from ratlit.models import RAT

    torch.manual_seed(0)
    model = RAT(attention=attention)
    side = 256 if case == "train" else 512
    regions, image = slic_regions(side)
    base = peak_rss_reset()
    start = time.perf_counter()
    if case == "train":
        loss = FocalRegionLoss()(model(image, regions), image, regions)
        loss.backward()
    else:
        with torch.inference_mode():
            model.eval()(image, regions)
    seconds = time.perf_counter() - start
    return {"case": case, "side": side, "regions": int(regions.unique().numel()), "seconds": seconds,
            "peak_gb": (rss("VmHWM") - base) / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attention", default="rmsa", choices=["rmsa", "wmsa", "msa"])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case, args.attention)))
        return
    print(f"Paper-size RAT ({args.attention}), batch 1, {args.threads} CPU threads, SLIC regions")
    print("| case | image | regions | time (s) | peak extra RSS (GB) |")
    print("|---|---|---|---|---|")
    for case in ("train", "infer"):
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--attention", args.attention, "--case", case]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        label = "train step (fwd+bwd)" if case == "train" else "whole-image inference"
        print(f"| {label} | {r['side']}x{r['side']} | {r['regions']} | {r['seconds']:.1f} | {r['peak_gb']:.2f} |")


if __name__ == "__main__":
    main()
