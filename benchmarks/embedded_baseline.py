"""The embedded data sets: build time and the LQ-vs-HQ starting point on each test split.

    python benchmarks/embedded_baseline.py [--cache DIR]

Builds each embedded set (if not cached) and prints PSNR / SSIM of the LQ input against the HQ target,
mean ± std over the test images, with torchmetrics on the task's range (the same code as training).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from omegaconf import OmegaConf

from ratlit.data import DATAMODULES
from ratlit.partition import GridPartitioner
from ratlit.training.module import image_metrics
from ratlit.utils.config import CONF_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=None, help="cache folder (default: a fresh temporary one)")
    args = parser.parse_args()
    cache = args.cache or tempfile.mkdtemp(prefix="ratlit-embedded-")
    print(f"embedded data sets in {cache}, {torch.get_num_threads()} threads")
    print("| task | build (s) | test images | LQ vs HQ PSNR | LQ vs HQ SSIM |")
    print("|---|---|---|---|---|")
    for task, cls in DATAMODULES.items():
        data_range = float(OmegaConf.load(CONF_DIR / "task" / f"{task}.yaml").data_range)  # the task's metric range
        dm = cls(cache_dir=cache, partitioner=GridPartitioner())
        start = time.perf_counter()
        dm.ensure_embedded()
        built = time.perf_counter() - start
        psnr, ssim = [], []
        for batch in dm.test_dataloader():
            p, s = image_metrics(batch["lq"], batch["hq"], data_range)
            psnr.append(p)
            ssim.append(s)
        p, s = torch.cat(psnr), torch.cat(ssim)
        print(f"| {task} | {built:.0f} | {len(p)} | {p.mean():.2f} ± {p.std(unbiased=False):.2f} | "
              f"{s.mean():.4f} ± {s.std(unbiased=False):.4f} |")


if __name__ == "__main__":
    main()
