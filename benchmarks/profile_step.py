"""Where one paper-size RAT training step spends its time: torch.profiler's kernel table and GPU busy time.

    python benchmarks/profile_step.py [--attention rmsa] [--precision bf16-mixed] [--compile] [--rows 25]

Batch 4 at 256x256 with a SLIC partition (as bench_gpu.py); three warm-up steps, three profiled. Prints the
wall time per step, the summed device-kernel time per step (wall >> kernels: launch- or host-bound), and the
kernels / operators taking most device time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", default="rmsa")
    parser.add_argument("--region-impl", default="auto", help="auto, packed, flex or dense (sparse: alias of packed)")
    parser.add_argument("--precision", default="bf16-mixed", choices=["fp32", "bf16-mixed"])
    parser.add_argument("--compile", action="store_true", help="compile the repeated blocks (as model.compile=true)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)

    from torch.profiler import ProfilerActivity, profile

    from bench_rat import slic_regions
    from ratlit.losses import FocalRegionLoss
    from ratlit.models import RAT
    from ratlit.training.compiling import compile_repeated_blocks
    from ratlit.utils.checks import finite_checks

    device = torch.device(args.device)
    torch.set_float32_matmul_precision("high")
    regions, image = slic_regions(max(args.side, 256))
    regions = regions[:, : args.side, : args.side].repeat(args.batch, 1, 1).to(device)
    image = image[..., : args.side, : args.side].repeat(args.batch, 1, 1, 1).contiguous().to(device)
    model = RAT(attention=args.attention, region_impl=args.region_impl).to(device)
    if args.compile:
        compile_repeated_blocks(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as conf/optimizer/adam.yaml
    loss_fn = FocalRegionLoss()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed"
                else contextlib.nullcontext())

    def step() -> None:
        with autocast, finite_checks(False):
            loss = loss_fn(model(image, regions), image, regions)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    steps = 3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = (time.perf_counter() - start) / steps * 1e3
    events = prof.key_averages()
    device_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) \
        if device.type == "cuda" else 0.0
    print(f"{args.attention}/{args.region_impl} {args.precision} compiled={args.compile}: "
          f"{wall:.1f} ms per step (profiled), device kernels {device_us / steps / 1e3:.1f} ms per step")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
