"""Gather runs into a paper-style table: ``python -m ratlit.report <run or sweep folder> [--reference ...]``.

An "input" row (the LQ images scored against HQ: where every run starts), then one row per run, runs that
differ only in ``seed`` merged (every ``results.json`` below the folder): the overrides that distinguish the
runs, test PSNR and SSIM as mean ± std over images (and over seeds) and the gain over the input. Then each
row against a reference row (``--reference``; by default the first row of each task), image by image
(``ratlit.analysis.paired``): the mean per-image difference, its 95% bootstrap interval over images and seeds, a
Wilcoxon p-value and a verdict. Writes ``report.md``, ``report.csv`` (one number per cell), ``paired.md``,
``paired.csv`` and ``report.png`` (per-image differences against the reference with their intervals) into the
folder (or ``--out``); ``--wandb`` logs the tables and chart to the sweep's W&B group.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from math import isfinite, nan
from pathlib import Path
from typing import Any

import numpy as np

from ratlit.analysis.paired import METRICS, RESAMPLES, RULE, Scores, compare, image_set_note, read_per_image
from ratlit.utils.files import atomic_output, write_text_atomic
from ratlit.utils.tables import csv_text, markdown_table


def load_runs(folder: Path) -> list[dict[str, Any]]:
    if not folder.exists():
        raise ValueError(f"{folder} does not exist")
    runs = []
    for path in sorted(folder.rglob("results.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {path}: {err}") from err
        result["run"] = str(path.parent.relative_to(folder)) if path.parent != folder else path.parent.name
        result["_dir"] = str(path.parent)  # where its test_results.csv is
        runs.append(result)
    if not runs:
        raise ValueError(f"no runs (results.json) under {folder}")
    return runs


def distinguishing(runs: list[dict[str, Any]]) -> list[str]:
    """Override keys whose values differ between runs (all of them for a single run)."""
    parsed = [dict(o.split("=", 1) for o in run.get("overrides", []) if "=" in o) for run in runs]
    keys = sorted({k.lstrip("+~") for p in parsed for k in p})
    for p in parsed:
        for k in list(p):
            p[k.lstrip("+~")] = p.pop(k)
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def _overrides(run: dict[str, Any]) -> dict[str, str]:
    return {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in run.get("overrides", []) if "=" in o}


def group_seeds(runs: list[dict[str, Any]], keys: list[str]) -> list[list[dict[str, Any]]]:
    """Runs that differ only in ``seed`` form one group (first-seen order)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        over = _overrides(run)
        ident = (run.get("task"), *(over.get(k, "") for k in keys if k != "seed"))
        groups.setdefault(ident, []).append(run)
    return list(groups.values())


def _score(runs: list[dict[str, Any]], entry: str, name: str) -> dict[str, float] | None:
    """Mean over runs, the mean std over images, and the std over runs (seeds) of one score."""
    values = [(r.get(entry) or {}).get(name) for r in runs]
    if any(v is None for v in values):
        return None
    image_std = [(r.get(entry) or {}).get(f"{name}_std") or 0.0 for r in runs]
    mean = sum(values) / len(values)
    seed_std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {"mean": mean, "image_std": sum(image_std) / len(image_std), "seed_std": seed_std, "count": len(values)}


def _cell(score: dict[str, float] | None, digits: int) -> str:
    if score is None:
        return "n/a"
    text = f"{score['mean']:.{digits}f} ± {score['image_std']:.{digits}f}"
    return text + (f" (seeds ± {score['seed_std']:.{digits}f})" if score["count"] > 1 else "")


def summarise(runs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The distinguishing override keys (seed aside) and one entry per row: the input of each task, then each
    group of runs that differ only in seed, with test and input scores and the partitioner that ran."""
    keys = [k for k in distinguishing(runs) if k != "seed"]
    entries: list[dict[str, Any]] = []
    for task in dict.fromkeys(r.get("task") for r in runs):
        given = [r for r in runs if r.get("task") == task and r.get("input")]
        if given:
            entries.append({"label": "input" if len({r.get("task") for r in runs}) == 1 else f"input ({task})",
                            "task": task, "keys": {}, "runs": given, "is_input": True, "partition_used": "",
                            "psnr": _score(given[:1], "input", "psnr"), "ssim": _score(given[:1], "input", "ssim")})
    for group in group_seeds(runs, keys):
        over = _overrides(group[0])
        entries.append({
            "label": group[0]["run"] if len(group) == 1 else f"{group[0]['run']} (+{len(group) - 1} seeds)",
            "task": group[0].get("task"), "keys": {k: over.get(k, "") for k in keys}, "runs": group,
            "partition_used": (group[0].get("partition") or {}).get("name", ""), "is_input": False,
            "psnr": _score(group, "test", "psnr"), "ssim": _score(group, "test", "ssim"),
            "input_psnr": _score(group, "input", "psnr"), "input_ssim": _score(group, "input", "ssim"),
        })
    return keys, entries


def table_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: run, distinguishing overrides, the partitioner that ran (``partition_used``: a
    ``partition=`` override may differ where a fallback ran), seeds, test PSNR / SSIM (mean ± std over
    images; with several seeds also ± std over seeds) and the gain over the input (LQ) on the same images."""
    keys, entries = summarise(runs)
    header = ["run", *keys, "partition_used", "seeds", "test PSNR", "PSNR gain", "test SSIM", "SSIM gain"]
    rows = []
    for e in entries:
        if e["is_input"]:
            rows.append([e["label"], *("" for _ in keys), "", "", _cell(e["psnr"], 4), "0", _cell(e["ssim"], 4), "0"])
            continue
        gains = []
        for name in ("psnr", "ssim"):
            base = e[f"input_{name}"]
            gains.append(f"{e[name]['mean'] - base['mean']:+.4f}" if e[name] and base else "n/a")
        rows.append([e["label"], *(e["keys"][k] for k in keys), e["partition_used"], str(len(e["runs"])),
                     _cell(e["psnr"], 4), gains[0], _cell(e["ssim"], 4), gains[1]])
    return header, rows


def _seed(run: dict[str, Any]) -> str | None:
    seed = _overrides(run).get("seed", (run.get("columns") or {}).get("seed"))
    return None if seed is None else str(seed)


def variant_scores(entry: dict[str, Any]) -> Scores | None:
    """The per-image test scores of a row's runs (None when a run has no ``test_results.csv``)."""
    paths = [Path(run["_dir"]) / "test_results.csv" for run in entry["runs"]]
    if not all(p.is_file() for p in paths):
        return None
    return Scores([read_per_image(p) for p in paths], [_seed(r) for r in entry["runs"]])


def choose_references(entries: list[dict[str, Any]], reference: str | None) -> dict[Any, dict[str, Any] | None]:
    """Per task, the row every other row is compared with: by default the first; ``input`` (each row against
    its own input images); ``key=value[,key=value]`` (overrides or W&B columns, e.g. ``attention=msa``); or a
    run folder / row label. None stands for the input."""
    variants = [e for e in entries if not e["is_input"]]
    tasks = list(dict.fromkeys(e["task"] for e in variants))
    if reference == "input":
        return {t: None for t in tasks}
    chosen: dict[Any, dict[str, Any] | None] = {}
    for task in tasks:
        rows = [e for e in variants if e["task"] == task]
        if reference is None:
            chosen[task] = rows[0]
            continue
        if "=" in reference:
            wanted = dict(item.strip().split("=", 1) for item in reference.split(","))
            match = [e for e in rows if all({**(e["runs"][0].get("columns") or {}), **_overrides(e["runs"][0])}
                                            .get(k.lstrip("+~")) == v for k, v in wanted.items())]
        else:
            match = [e for e in rows if reference.rstrip("/") in (e["label"], *(r["run"] for r in e["runs"]))]
        if len(match) > 1:
            raise ValueError(f"--reference {reference} matches {len(match)} rows of task {task} "
                             f"({', '.join(e['label'] for e in match)}); name more overrides (key=value,key=value)")
        if match:
            chosen[task] = match[0]
    if not chosen:
        raise ValueError(f"--reference {reference} matches no run: give key=value as in the runs' overrides "
                         "(e.g. attention=msa), a run folder, or input")
    return chosen


def paired_table(runs: list[dict[str, Any]], reference: str | None = None, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """The distinguishing keys, one row per (row of the report but the reference, metric) with the paired
    statistics against the reference of its task (``paired.compare``), and notes on mismatched image sets."""
    keys, entries = summarise(runs)
    references = choose_references(entries, reference)
    rows, notes = [], []
    for e in entries:
        if e["is_input"] or e["task"] not in references or references[e["task"]] is e:
            continue
        ref = references[e["task"]]
        scores = variant_scores(e)
        ref_scores = (scores.as_input() if scores else None) if ref is None else variant_scores(ref)
        ref_label = "input" if ref is None else ref["label"]
        base = {"task": e["task"], "run": e["label"], **e["keys"],
                "partition_used": e["partition_used"], "reference": ref_label}
        if scores is not None and ref_scores is not None:
            note = image_set_note(e["label"], scores, ref_scores, ref_label)
            notes += [note] if note else []
        for metric in METRICS:
            if scores is None or ref_scores is None:
                stats = {"mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "wilcoxon_p": nan,
                         "verdict": "n/a (no test_results.csv)", "images": 0, "seeds": len(e["runs"]),
                         "reference_seeds": len(ref["runs"]) if ref else 1, "seed_pairing": "", "interval_over": ""}
            else:
                stats = compare(scores, ref_scores, metric, resamples, seed)
            rows.append({**base, "metric": metric, **stats})
    return keys, rows, notes


PAIRED_COLUMNS = ["mean", "std", "ci_low", "ci_high", "wilcoxon_p", "verdict", "images", "seeds", "reference_seeds",
                  "seed_pairing", "interval_over"]


def _num(value: Any) -> str:
    """One number per CSV cell ('' for none); text stays text."""
    if value is None or (isinstance(value, float) and not isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def paired_csv_rows(keys: list[str], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "run", *keys, "partition_used", "reference", "metric", *PAIRED_COLUMNS]
    return header, [[_num(r.get(c, "")) for c in header] for r in rows]


def paired_markdown(rows: list[dict[str, Any]], notes: list[str]) -> str:
    """The paired table, readable: difference [95% interval], p-value, verdict; its rule and the notes."""
    lines = [f"Paired per-image differences against the reference (mean [95% bootstrap interval]); {RULE}.", "",
             "| run | reference | metric | difference | 95% interval | Wilcoxon p | verdict | images | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        digits = 4 if r["metric"] == "psnr" else 5
        diff = f"{r['mean']:+.{digits}f}" if isfinite(r["mean"]) else "n/a"
        interval = f"[{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]" if isfinite(r["ci_low"]) else "n/a"
        p = f"{r['wilcoxon_p']:.3g}" if isfinite(r["wilcoxon_p"]) else "n/a"
        lines.append(f"| {r['run']} | {r['reference']} | {r['metric'].upper()} | {diff} | {interval} | {p} | "
                     f"{r['verdict']} | {r['images']} | {r['seeds']} vs {r['reference_seeds']} |")
    return "\n".join(lines + [f"\nwarning: {n}" for n in notes]) + "\n"


def numeric_rows(runs: list[dict[str, Any]], gains: dict[tuple[str, str], dict[str, Any]] | None = None
                 ) -> tuple[list[str], list[list[str]]]:
    """``report.csv``: one number per cell; the gain over the input with its paired 95% interval where the
    runs' per-image scores are there (``gains[(row label, metric)]``: ``paired.compare`` against the input)."""
    keys, entries = summarise(runs)
    header = ["task", "run", *keys, "partition_used", "seeds"]
    for m in METRICS:
        header += [f"{m}_mean", f"{m}_std_images", f"{m}_std_seeds", f"{m}_gain", f"{m}_gain_ci_low",
                   f"{m}_gain_ci_high"]
    header.append("images")
    rows = []
    for e in entries:
        seeds = "" if e["is_input"] else str(len(e["runs"]))
        row = [e["task"], e["label"], *(e["keys"].get(k, "") for k in keys), e["partition_used"], seeds]
        images = None
        for m in METRICS:
            score, base = e[m], e.get(f"input_{m}")
            gain = (gains or {}).get((e["label"], m)) or {}
            images = gain.get("images", images)
            if e["is_input"]:
                row += [_num(score and score["mean"]), _num(score and score["image_std"]), "", "0", "", ""]
                continue
            summary_gain = score["mean"] - base["mean"] if score and base else None
            row += [_num(score and score["mean"]), _num(score and score["image_std"]),
                    _num(score and score["seed_std"]), _num(gain["mean"] if gain.get("images") else summary_gain),
                    _num(gain.get("ci_low")), _num(gain.get("ci_high"))]
        rows.append([*row, _num(images)])
    return header, rows


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
    for ax, metric, unit, digits in zip(axes, METRICS, (" dB", ""), (4, 5)):
        mine = [r for r in rows if r["metric"] == metric]
        for i, r in enumerate(mine):
            if not isfinite(r["mean"]):  # a label, not a point at 0 that would read "as good as the reference"
                ax.annotate("n/a", (i, 0), ha="center", va="bottom", fontsize=8, color="grey")
                continue
            diffs = r["differences"]
            ax.scatter(i + np.linspace(-0.25, 0.25, len(diffs)), diffs, s=5, color="grey", alpha=0.4,
                       label="per image (seed mean)" if i == 0 else None)
            colour = "tab:green" if r["ci_low"] > 0 else "tab:red" if r["ci_high"] < 0 else "dimgrey"
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


def report(folder: Path, out: Path | None = None, reference: str | None = None, resamples: int = RESAMPLES,
           seed: int = 0) -> str:
    """Write report.{md,csv,png} and paired.{md,csv}; returns report.md."""
    runs = load_runs(folder)
    header, rows = table_rows(runs)
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(header, rows)
    table = paired_table(runs, reference, resamples, seed)
    against_input = paired_table(runs, "input", resamples, seed)[1]
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
        raise ValueError(f"{path} does not exist: write the report first")
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))

    def number(cell: str) -> float | None:
        return float(cell) if cell else None

    columns = list(zip(*rows)) if rows else [() for _ in header]
    numeric = []
    for cells in columns:
        try:
            numeric.append([number(c) for c in cells])
        except ValueError:
            numeric.append(list(cells))
    return header, [list(row) for row in zip(*numeric)]


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
        raise ValueError(f"the runs under {folder} name {len(names)} sweeps; give the W&B group with --wandb-group")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ratlit.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder or a sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="where the report files go (default: the folder)")
    parser.add_argument("--reference", default=None,
                        help="what each row is compared with, image by image: key=value[,key=value] (e.g. "
                             "attention=msa), a run folder, or input (default: the first row of each task)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="the bootstrap's random seed")
    parser.add_argument("--wandb", action="store_true", help="also log the tables and chart to the sweep's W&B group")
    parser.add_argument("--wandb-group", default=None, help="the W&B group (default: the runs' sweep_name)")
    parser.add_argument("--wandb-project", default="ratlit")
    args = parser.parse_args(argv)
    out = args.out or args.folder
    try:
        if args.resamples < 100:
            raise ValueError(f"--resamples {args.resamples}: give at least 100 for a 95% interval")
        print(report(args.folder, args.out, args.reference, args.resamples, args.bootstrap_seed), end="")
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
