"""R-MSA cost: packed block-sparse region attention vs the dense masked formulation (Eq. 3-4).

Forward + backward of one attention call at 64x64 tokens (the RAT level of a 256x256 patch),
256 channels, 8 heads, batch 2, on partitions of a real image (scikit-image's camera):
SLIC (70-100 regions, like the paper's fine partitions) and Felzenszwalb (heavy-tailed, like SAM's).
Each case runs in a fresh subprocess so its peak resident memory is its own.

    python benchmarks/bench_attention.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

TOKENS_SIDE, CHANNELS, HEADS, BATCH = 64, 256, 8, 2


def partition(kind: str, side: int = TOKENS_SIDE) -> np.ndarray:
    """A real-image partition at full (4x) resolution, taken to the token grid by nearest sampling."""
    from skimage import data, segmentation, transform

    image = transform.resize(data.camera(), (4 * side, 4 * side), anti_aliasing=True)
    if kind == "slic":
        labels = segmentation.slic(image, n_segments=100, compactness=0.1, channel_axis=None, start_label=0)
    elif kind == "felzenszwalb":
        labels = segmentation.felzenszwalb(image, scale=400, sigma=0.8, min_size=200)
    elif kind == "single":
        labels = np.zeros(image.shape, dtype=np.int64)
    elif kind == "pixels":
        labels = np.arange(image.size).reshape(image.shape)
    else:
        raise ValueError(kind)
    return labels[::4, ::4].astype(np.int64)


def peak_rss_reset() -> int:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak-RSS counter (Linux)
        f.write("5")
    return rss("VmRSS")


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def run_case(impl: str, kind: str, repeats: int) -> dict:
    from ratlit.models.region_attention import dense_region_attention, region_attention

    torch.manual_seed(0)
    labels = torch.from_numpy(partition(kind)).reshape(1, -1).repeat(BATCH, 1)
    d = CHANNELS // HEADS
    shape = (BATCH, HEADS, TOKENS_SIDE * TOKENS_SIDE, d)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    scale = HEADS**-0.5

    def step() -> None:
        if impl == "dense":
            out = dense_region_attention(q, k, v, labels, scale, mask_value=-1000.0)
        elif impl == "msa":
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            out = region_attention(q, k, v, labels, scale, impl="packed")
        out.sum().backward()

    step()  # warm-up
    base = peak_rss_reset()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    _, counts = np.unique(labels[0].numpy(), return_counts=True)
    n = labels.shape[1]
    return {
        "impl": impl,
        "partition": kind,
        "regions": int(len(counts)),
        "work": float((counts.astype(np.float64) ** 2).sum() / n**2),
        "seconds": float(np.median(times)),
        "peak_mb": (rss("VmHWM") - base) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        impl, kind = args.case.split(":")
        print(json.dumps(run_case(impl, kind, args.repeats)))
        return

    cases = [(impl, kind) for kind in ("slic", "felzenszwalb") for impl in ("dense", "packed")]
    cases += [("packed", "single"), ("packed", "pixels"), ("msa", "single")]
    rows = []
    for impl, kind in cases:
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats)]
        result = subprocess.run([*cmd, "--case", f"{impl}:{kind}"], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    print(f"R-MSA forward+backward, {TOKENS_SIDE}x{TOKENS_SIDE} tokens, C={CHANNELS}, {HEADS} heads, "
          f"batch {BATCH}, {args.threads} CPU threads")
    print("| partition | regions | sum n_i^2/N^2 | method | time (s) | peak extra RSS (MB) | speed-up | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    dense = {r["partition"]: r for r in rows if r["impl"] == "dense"}
    for r in rows:
        ref = dense.get(r["partition"], dense["slic"])
        speed = ref["seconds"] / r["seconds"]
        mem = ref["peak_mb"] / max(r["peak_mb"], 1e-6)
        name = {"dense": "dense mask (Eq. 3-4)", "packed": "ratlit packed", "msa": "global MSA (SDPA)"}[r["impl"]]
        print(f"| {r['partition']} | {r['regions']} | {r['work']:.4f} | {name} | {r['seconds']:.3f} | "
              f"{r['peak_mb']:.0f} | {speed:.1f}x | {mem:.1f}x |")


if __name__ == "__main__":
    main()
