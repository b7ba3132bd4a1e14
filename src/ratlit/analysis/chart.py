"""The report's chart: per-image differences of each run against the reference, with their intervals."""

from __future__ import annotations

from math import isfinite
from pathlib import Path
from typing import Any

import numpy as np

from ratlit.analysis.paired import METRICS
from ratlit.analysis.report_tables import paired_table
from ratlit.utils.files import atomic_output


def bar_chart(runs: list[dict[str, Any]], path: Path, reference: str | None = None,
              table: tuple[list[str], list[dict[str, Any]], list[str]] | None = None) -> None:
    """Per-image differences against the reference (0, a black line): the images as grey points, the mean as
    a dot with its 95% bootstrap interval (green / red when resolved, grey when not), the axis scaled by the
    data around 0 (no bar drawn from 0 to a -0.003 dB mean); a run without test scores is marked n/a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, rows, _ = table or paired_table(runs, reference)
    references = sorted({str(r["reference"]) for r in rows}) or ["none"]
    count = len(rows) // len(METRICS)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * count + 4), 4.4))
    for ax, metric, unit, digits in zip(axes, METRICS, (" dB", ""), (4, 5), strict=True):
        mine = [r for r in rows if r["metric"] == metric]
        for i, r in enumerate(mine):
            if not isfinite(r["mean"]):  # a label, not a point at 0 that would read "as good as the reference"
                ax.annotate("n/a", (i, 0), ha="center", va="bottom", fontsize=8, color="grey")
                continue
            diffs = r["differences"]
            ax.scatter(i + np.linspace(-0.25, 0.25, len(diffs)), diffs, s=5, color="grey", alpha=0.4,
                       label="per image (seed mean)" if i == 0 else None)
            colour = {"higher": "tab:green", "lower": "tab:red", "equivalent": "tab:blue"}.get(r["verdict"], "dimgrey")
            interval = [[max(r["mean"] - r["ci_low"], 0)], [max(r["ci_high"] - r["mean"], 0)]]  # float rounding
            ax.errorbar([i], [r["mean"]], yerr=interval, fmt="o", color=colour, capsize=6, elinewidth=2,
                        label="mean, 95% interval" if i == 0 else None)
            ax.annotate(f"{r['mean']:+.{digits}f}{unit}\n{r['verdict']}", (i, r["ci_high"]), xytext=(0, 4),
                        textcoords="offset points", ha="center", fontsize=6)
        ax.axhline(0, color="black", linewidth=1.2, label="reference")
        ax.margins(y=0.15)  # room for the labels above the intervals
        low, high = ax.get_ylim()
        span = max(high - low, 1e-9)
        ax.set_ylim(min(low, -0.05 * span), max(high, 0.05 * span))  # 0 always inside
        ax.set_title(f"test {metric.upper()} per image minus the reference\n({', '.join(references)})", fontsize=8)
        ax.set_ylabel(f"{metric.upper()} difference{unit}")
        labels = [",".join(str(r.get(k, "")) for k in keys) or r["run"] for r in mine]
        ax.set_xticks(range(len(mine)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, max(len(mine), 1) - 0.4)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    with atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
