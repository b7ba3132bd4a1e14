"""Gather runs into a paper-style table: ``python -m ratlit.report <run or sweep folder> [--reference ...]``.

What the report holds and writes: :mod:`ratlit.analysis.report`, which builds it.

The one command not started by :func:`ratlit.cli.command.hydra_command`: it takes a folder as its positional
argument and ``--flags`` (``python -m ratlit.report <folder> --reference attention=msa``), which Hydra's
override grammar has no form for, and it composes no config (it reads the runs' own results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ratlit.analysis.paired import MIN_EFFECT, RESAMPLES
from ratlit.analysis.report import log_to_wandb, report
from ratlit.utils.errors import InputError


def min_effects(text: str | None) -> dict[str, float]:
    """``--min-effect psnr=0.05,ssim=0.001`` as ``{metric: value}`` (metrics not named keep their default)."""
    effects: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        metric, _, value = item.partition("=")
        metric = metric.strip().lower()
        try:
            effects[metric] = float(value)
        except ValueError:
            effects[metric] = -1.0
        if metric not in MIN_EFFECT or not effects[metric] >= 0:
            raise InputError(f"--min-effect {text!r}: give metric=value with metric in {', '.join(MIN_EFFECT)} and "
                             "value >= 0 (e.g. psnr=0.05,ssim=0.001)")
    return effects


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ratlit.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder or a sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="where the report files go (default: the folder)")
    parser.add_argument("--reference", default=None,
                        help="what each row is compared with, image by image: key=value[,key=value] (e.g. "
                             "attention=msa), a run folder, or input (default: the first row of each task)")
    parser.add_argument("--min-effect", default=None, metavar="psnr=X,ssim=Y",
                        help="the smallest difference of interest per metric: a difference whose interval does not "
                             "clear it is never called higher or lower (default: "
                             + ", ".join(f"{k}={v:g}" for k, v in MIN_EFFECT.items()) + "; docs/sweeps.md says why)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="the bootstrap's random seed")
    parser.add_argument("--wandb", action="store_true", help="also log the tables and chart to the sweep's W&B group")
    parser.add_argument("--wandb-group", default=None, help="the W&B group (default: the runs' sweep_name)")
    parser.add_argument("--wandb-project", default="ratlit")
    args = parser.parse_args(argv)
    out = args.out or args.folder
    try:
        if args.resamples < 100:
            raise InputError(f"--resamples {args.resamples}: give at least 100 for a 95% interval")
        effects = min_effects(args.min_effect)
        print(report(args.folder, args.out, args.reference, args.resamples, args.bootstrap_seed, effects), end="")
        print("\n" + (out / "paired.md").read_text(), end="")
        if args.wandb:
            mode = log_to_wandb(args.folder, out, args.wandb_group, args.wandb_project)
            print(f"logged the report to W&B ({mode})")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}/report.{{md,csv,png}} and {out}/paired.{{md,csv}}")

if __name__ == "__main__":
    main()
