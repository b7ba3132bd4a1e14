"""A report of runs (``python -m ratlit.report``): its files written into a folder, and logged to W&B.

An "input" row (the LQ images scored against HQ: where every run starts), then one row per run, runs that
differ only in ``seed`` merged (every ``results.json`` below the folder): the overrides that distinguish the
runs, test PSNR and SSIM as mean ± std over images (and over seeds) and the gain over the input. Then each
row against a reference row (``--reference``; by default the first row of each task), image by image
(``ratlit.analysis.paired``): the mean per-image difference, its 95% bootstrap interval over groups (patients),
images and seeds, a Wilcoxon p-value and a verdict against the smallest effect of interest. Every job of each
sweep in the folder is accounted for (finished, failed, incomplete, missing). Writes ``report.md``,
``report.csv`` (one number per cell), ``paired.md``,
``paired.csv`` and ``report.png`` (per-image differences against the reference with their intervals) into the
folder (or ``--out``); ``--wandb`` logs the tables and chart to the sweep's W&B group.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ratlit.analysis.chart import bar_chart
from ratlit.analysis.paired import RESAMPLES
from ratlit.analysis.report_tables import (
    jobs_markdown,
    numeric_rows,
    paired_csv_rows,
    paired_markdown,
    paired_table,
    table_rows,
)
from ratlit.analysis.runs import account_jobs, load_runs
from ratlit.utils.errors import InputError
from ratlit.utils.files import write_text_atomic
from ratlit.utils.tables import csv_text, markdown_table


def report(folder: Path, out: Path | None = None, reference: str | None = None, resamples: int = RESAMPLES,
           seed: int = 0, min_effect: dict[str, float] | None = None) -> str:
    """Write report.{md,csv,png} and paired.{md,csv}; returns report.md: the table, then every job of each sweep
    below ``folder`` accounted for (finished, failed with its reason, incomplete, missing)."""
    jobs = account_jobs(folder) if folder.exists() else []
    runs = load_runs(folder, jobs)
    header, rows = table_rows(runs, jobs)
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    accounting = jobs_markdown(jobs)
    markdown = markdown_table(header, rows) + (f"\n{accounting}" if accounting else "")
    table = paired_table(runs, reference, resamples, seed, min_effect)
    against_input = paired_table(runs, "input", resamples, seed, min_effect)[1]
    gains = {(r["run"], r["metric"]): r for r in against_input}
    write_text_atomic(out / "report.md", markdown)
    write_text_atomic(out / "report.csv", csv_text(*numeric_rows(runs, gains)))
    write_text_atomic(out / "paired.md", paired_markdown(table[1], table[2]))
    write_text_atomic(out / "paired.csv", csv_text(*paired_csv_rows(table[0], table[1])))
    bar_chart(runs, out / "report.png", table=table)
    return markdown


def _read_table(path: Path) -> tuple[list[str], list[list[Any]]]:
    """A report CSV back, a column whose cells are all numbers (or empty) as numbers (W&B sorts and plots them)."""
    if not path.is_file():
        raise InputError(f"{path} does not exist: write the report first")
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))

    def number(cell: str) -> float | None:
        return float(cell) if cell else None

    # A hand-edited, ragged row: the columns cut to the shortest row.
    columns = list(zip(*rows, strict=False)) if rows else [() for _ in header]
    numeric = []
    for cells in columns:
        try:
            numeric.append([number(c) for c in cells])
        except ValueError:
            numeric.append(list(cells))
    return header, [list(row) for row in zip(*numeric, strict=True)]


def log_to_wandb(folder: Path, out: Path, group: str | None = None, project: str = "ratlit") -> str:
    """Log the report (``report.csv`` and ``paired.csv`` as ``wandb.Table``s, and the chart) as a
    ``job_type=report`` run in the sweep's W&B group (the runs' ``sweep_name`` unless ``group`` is given);
    offline without credentials or network."""
    import wandb

    from ratlit.training.loggers import wandb_online

    runs = load_runs(folder)
    names = {r.get("sweep_name") for r in runs if r.get("sweep_name")}
    group = group or (names.pop() if len(names) == 1 else None)
    if not group:
        raise InputError(f"the runs under {folder} name {len(names)} sweeps; give the W&B group with --wandb-group")
    tables = {key: _read_table(out / name) for key, name in (("table", "report.csv"), ("paired", "paired.csv"))}
    mode = "online" if wandb_online() else "offline"
    run = wandb.init(project=project, group=group, job_type="report", name=f"report {group}", dir=str(out),
                     mode=mode, config={"folder": str(folder), "runs": len(runs)})
    try:
        run.log({**{f"report/{k}": wandb.Table(columns=h, data=d) for k, (h, d) in tables.items()},
                 "report/chart": wandb.Image(str(out / "report.png"))})
    finally:
        run.finish()
    return mode
