"""Table of the zero-init measurement (experiments/zero_init.sh): test PSNR / SSIM mean ± std over seeds.

    python experiments/zero_init_table.py <folder of runs>

Each run folder is ``steps<N>_zero<true|false>_seed<S>`` with a results.json. The input row scores the LQ
images of the same test split against HQ, with the code that scores the runs.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ratlit.training.module import image_metrics

NAME = re.compile(r"steps(\d+)_zero(true|false)_seed(\d+)")


def input_score(run: Path) -> tuple[float, float, float, float, int]:
    """LQ-vs-HQ PSNR / SSIM mean and std over the run's test images."""
    data = OmegaConf.load(run / "config.yaml").data
    datamodule = instantiate(data)
    psnr, ssim = [], []
    for batch in datamodule.test_dataloader():
        p, s = image_metrics(batch["lq"].float(), batch["hq"].float(), 1.0)
        psnr.append(p)
        ssim.append(s)
    p, s = torch.cat(psnr), torch.cat(ssim)
    return p.mean().item(), p.std(unbiased=False).item(), s.mean().item(), s.std(unbiased=False).item(), len(p)


def untrained_scores(run: Path, zero: bool, seeds: tuple[int, ...] = (0, 1, 2)) -> list[float]:
    """Test PSNR of the untrained network (step 0) of the run's config, per seed."""
    import lightning as L

    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.net.zero_init_last = zero
    datamodule = instantiate(cfg.data)
    scores = []
    for seed in seeds:
        L.seed_everything(seed, verbose=False)
        net = instantiate(cfg.model.net).eval()
        psnr = []
        with torch.no_grad():
            for batch in datamodule.test_dataloader():
                p, _ = image_metrics(net(batch["lq"], batch["regions"]).float(), batch["hq"].float(), 1.0)
                psnr.append(p)
        scores.append(torch.cat(psnr).mean().item())
    return scores


def main(folder: Path) -> None:
    groups: dict[tuple[int, str], list[dict]] = {}
    for path in sorted(folder.glob("*/results.json")):
        match = NAME.fullmatch(path.parent.name)
        if match:
            groups.setdefault((int(match[1]), match[2]), []).append(json.loads(path.read_text()))
    first = next(iter(sorted(folder.glob("*/config.yaml"))))
    ip, ips, iss, isss, count = input_score(first.parent)
    recorded = [r["input"]["psnr"] for runs in groups.values() for r in runs if r.get("input")]
    assert all(abs(v - ip) < 1e-3 for v in recorded), (recorded, ip)  # every run saw the same test images
    print("# Zero-initialised last layer vs random: smoke-size RAT, embedded CT\n")
    print(f"Test split: {count} whole 512x512 slices. Each cell: mean ± std over seeds of the run's test mean "
          "(in brackets: the mean over seeds of the std over images).\n")
    print("| steps | zero_init_last | seeds | test PSNR (dB) | gain over input (dB) | test SSIM |")
    print("|---|---|---|---|---|---|")
    print(f"| 0 | input (LQ vs HQ) | - | {ip:.2f} [{ips:.2f}] | 0 | {iss:.4f} [{isss:.4f}] |")
    for zero in ("true", "false"):
        scores = untrained_scores(first.parent, zero == "true")
        print(f"| 0 (untrained) | {zero} | {len(scores)} | "
              f"{statistics.mean(scores):.2f} ± {statistics.pstdev(scores):.2f} | "
              f"{statistics.mean(scores) - ip:+.2f} | - |")
    for (steps, zero), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "true")):
        psnr = [r["test"]["psnr"] for r in runs]
        ssim = [r["test"]["ssim"] for r in runs]
        spread = lambda v: statistics.pstdev(v) if len(v) > 1 else 0.0  # noqa: E731
        img_p = statistics.mean(r["test"]["psnr_std"] for r in runs)
        img_s = statistics.mean(r["test"]["ssim_std"] for r in runs)
        print(f"| {steps} | {zero} | {len(runs)} | {statistics.mean(psnr):.2f} ± {spread(psnr):.2f} [{img_p:.2f}] | "
              f"{statistics.mean(psnr) - ip:+.2f} | {statistics.mean(ssim):.4f} ± {spread(ssim):.4f} [{img_s:.4f}] |")
    print("\nPer run (seed: test PSNR):\n")
    for (steps, zero), runs in sorted(groups.items()):
        print(f"- {steps} steps, zero_init_last={zero}: " + ", ".join(f"{r['test']['psnr']:.2f}" for r in runs))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
