"""Paper-size RAT on CPU: one training step on a 256x256 patch and whole-image inference at 512x512.

Partitions are SLIC (about 80 regions) on scikit-image's camera image, as in bench_attention.py.
Each case runs in a fresh subprocess: one warm-up step, then the best of ``--repeats``; peak memory is the
process's peak RSS above its start. malloc keeps freed memory as the CLIs set it (ratlit.utils.allocator);
``--malloc system`` measures glibc's defaults instead.

    python benchmarks/bench_rat.py [--threads 2] [--attention rmsa] [--repeats 2] [--malloc keep|system]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from bench_attention import peak_rss_reset, rss


def slic_regions(side: int) -> torch.Tensor:
    from skimage import data, segmentation, transform

    image = transform.resize(data.camera(), (side, side), anti_aliasing=True)
    labels = segmentation.slic(image, n_segments=100 * (side // 256) ** 2, compactness=0.1, channel_axis=None)
    return torch.from_numpy(labels.astype(np.int64))[None], torch.from_numpy(image).float()[None, None]


def network_step(train: bool, attention: str = "rmsa") -> tuple[Callable[[], None], torch.Tensor]:
    """One paper-size RAT step through the public API: training (loss, backward) at 256x256 or inference at
    512x512; returns the step and its region map."""
    from ratlit.losses import FocalRegionLoss
    from ratlit.models import RAT

    torch.manual_seed(0)
    model = RAT(attention=attention)
    regions, image = slic_regions(256 if train else 512)

    def step() -> None:
        if train:
            model.zero_grad(set_to_none=True)
            FocalRegionLoss()(model(image, regions), image, regions).backward()
        else:
            with torch.inference_mode():
                model.eval()(image, regions)

    return step, regions


def run_case(case: str, attention: str, repeats: int, malloc: str) -> dict:
    if malloc == "keep":
        from ratlit.utils.allocator import keep_freed_memory

        # The user's own malloc settings (RATLIT_MALLOC=system, GLIBC_TUNABLES, ...) win: report what ran.
        malloc = "keep" if keep_freed_memory() else "system"
    step, regions = network_step(case == "train", attention)
    base = peak_rss_reset()
    step()  # warm-up: first-call dispatch, and the heap growing to its working size
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"case": case, "side": regions.shape[-1], "regions": int(regions.unique().numel()), "seconds": min(times),
            "peak_gb": (rss("VmHWM") - base) / 2**30, "malloc": malloc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attention", default="rmsa", choices=["rmsa", "wmsa", "msa"])
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the warm-up (the best counts)")
    parser.add_argument("--malloc", choices=["keep", "system"], default="keep",
                        help="keep: freed memory kept for reuse, as the CLIs run (ratlit.utils.allocator); "
                             "system: glibc's defaults")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case, args.attention, args.repeats, args.malloc)))
        return
    print(f"Paper-size RAT ({args.attention}), batch 1, {args.threads} CPU threads, SLIC regions, "
          f"malloc {args.malloc}, best of {args.repeats} steps after a warm-up")
    print("| case | image | regions | time (s) | peak extra RSS (GB) |")
    print("|---|---|---|---|---|")
    overridden = False
    for case in ("train", "infer"):
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--attention", args.attention,
               "--repeats", str(args.repeats), "--malloc", args.malloc, "--case", case]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        label = "train step (fwd+bwd)" if case == "train" else "whole-image inference"
        print(f"| {label} | {r['side']}x{r['side']} | {r['regions']} | {r['seconds']:.1f} | {r['peak_gb']:.2f} |")
        overridden = overridden or r["malloc"] != args.malloc
    if overridden:
        print("malloc ran with glibc's defaults: your own settings (RATLIT_MALLOC, GLIBC_TUNABLES, ...) "
              "took precedence")


if __name__ == "__main__":
    main()
