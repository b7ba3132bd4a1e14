"""Gather runs into a paper-style table: ``python -m ratlit.report <run or sweep folder> [--out DIR]``.

An "input" row (the LQ images scored against HQ: where every run starts), then one row per run, runs that
differ only in ``seed`` merged (every ``results.json`` below the folder): the overrides that distinguish the
runs, test PSNR and SSIM as mean ± std over images (and over seeds) and the gain over the input. Writes
``report.md``, ``report.csv`` and ``report.png`` (gains over the input, error bars from images and seeds)
into the folder (or ``--out``); ``--wandb`` logs the table and chart to the sweep's W&B group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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
    group of runs that differ only in seed, with test and input scores."""
    keys = [k for k in distinguishing(runs) if k != "seed"]
    entries: list[dict[str, Any]] = []
    for task in dict.fromkeys(r.get("task") for r in runs):
        given = [r for r in runs if r.get("task") == task and r.get("input")]
        if given:
            entries.append({"label": "input" if len({r.get("task") for r in runs}) == 1 else f"input ({task})",
                            "task": task, "keys": {}, "runs": given, "is_input": True,
                            "psnr": _score(given[:1], "input", "psnr"), "ssim": _score(given[:1], "input", "ssim")})
    for group in group_seeds(runs, keys):
        over = _overrides(group[0])
        entries.append({
            "label": group[0]["run"] if len(group) == 1 else f"{group[0]['run']} (+{len(group) - 1} seeds)",
            "task": group[0].get("task"), "keys": {k: over.get(k, "") for k in keys}, "runs": group,
            "is_input": False, "psnr": _score(group, "test", "psnr"), "ssim": _score(group, "test", "ssim"),
            "input_psnr": _score(group, "input", "psnr"), "input_ssim": _score(group, "input", "ssim"),
        })
    return keys, entries


def table_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: run, distinguishing overrides, partition, seeds, test PSNR / SSIM (mean ± std over
    images; with several seeds also ± std over seeds) and the gain over the input (LQ) on the same images."""
    keys, entries = summarise(runs)
    header = ["run", *keys, "partition", "seeds", "test PSNR", "PSNR gain", "test SSIM", "SSIM gain"]
    rows = []
    for e in entries:
        if e["is_input"]:
            rows.append([e["label"], *("" for _ in keys), "", "", _cell(e["psnr"], 4), "0", _cell(e["ssim"], 4), "0"])
            continue
        gains = []
        for name in ("psnr", "ssim"):
            base = e[f"input_{name}"]
            gains.append(f"{e[name]['mean'] - base['mean']:+.4f}" if e[name] and base else "n/a")
        partition = (e["runs"][0].get("partition") or {}).get("name", "")
        rows.append([e["label"], *(e["keys"][k] for k in keys), partition, str(len(e["runs"])),
                     _cell(e["psnr"], 4), gains[0], _cell(e["ssim"], 4), gains[1]])
    return header, rows


def bar_chart(runs: list[dict[str, Any]], path: Path) -> None:
    """Gain over the input (test minus LQ on the same images) per row: the axis starts at the input's level
    (0, labelled with the input's score); thin error bars: std over images; thick: std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, entries = summarise(runs)
    bars = [e for e in entries if not e["is_input"]]
    given = {e["task"]: e for e in entries if e["is_input"]}
    labels = [",".join(e["keys"][k] for k in keys) or e["label"] for e in bars]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(bars) + 4), 4.2))
    for ax, name, unit in zip(axes, ("psnr", "ssim"), (" dB", "")):
        heights, image_err, seed_err, missing = [], [], [], []
        for i, e in enumerate(bars):
            base = e.get(f"input_{name}")
            score = e[name]
            ok = score is not None and base is not None
            heights.append(score["mean"] - base["mean"] if ok else 0.0)
            image_err.append(score["image_std"] if ok else 0.0)
            seed_err.append(score["seed_std"] if ok else 0.0)
            if not ok:
                missing.append(i)
        x = range(len(bars))
        colours = ["none" if i in missing else "tab:green" if h >= 0 else "tab:red" for i, h in enumerate(heights)]
        ax.bar(x, heights, color=colours, alpha=0.8)
        for i in missing:  # no test score: a label, not a bar at 0 that would read "as good as the input"
            ax.annotate("n/a", (i, 0), ha="center", va="bottom", fontsize=8, color="grey")
        ax.errorbar(x, heights, yerr=image_err, fmt="none", ecolor="black", elinewidth=1, capsize=5,
                    label="± std over images")
        if any(seed_err):
            ax.errorbar(x, heights, yerr=seed_err, fmt="none", ecolor="tab:blue", elinewidth=4, capsize=0,
                        label="± std over seeds")
        levels = ", ".join(f"{t}: {e[name]['mean']:.4g}{unit}" for t, e in given.items() if e[name])
        ax.axhline(0, color="black", linewidth=1.2)
        ax.set_title(f"test {name.upper()} gain over the input" + (f"\n(input = 0; {levels})" if levels else ""),
                     fontsize=9)
        ax.set_ylabel(f"{name.upper()} gain{unit}")
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def report(folder: Path, out: Path | None = None) -> str:
    runs = load_runs(folder)
    header, rows = table_rows(runs)
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(header, rows)
    write_text_atomic(out / "report.md", markdown)
    write_text_atomic(out / "report.csv", csv_text(header, rows))
    bar_chart(runs, out / "report.png")
    return markdown


def log_to_wandb(folder: Path, out: Path, group: str | None = None, project: str = "ratlit") -> str:
    """Log the report (a ``wandb.Table`` and the chart) as a ``job_type=report`` run in the sweep's W&B group
    (the runs' ``sweep_name`` unless ``group`` is given); offline without credentials or network."""
    import wandb

    from ratlit.training.loggers import wandb_online

    runs = load_runs(folder)
    names = {r.get("sweep_name") for r in runs if r.get("sweep_name")}
    group = group or (names.pop() if len(names) == 1 else None)
    if not group:
        raise ValueError(f"the runs under {folder} name {len(names)} sweeps; give the W&B group with --wandb-group")
    header, rows = table_rows(runs)
    mode = "online" if wandb_online() else "offline"
    run = wandb.init(project=project, group=group, job_type="report", name=f"report {group}", dir=str(out),
                     mode=mode, config={"folder": str(folder), "runs": len(runs)})
    try:
        run.log({"report/table": wandb.Table(columns=header, data=rows),
                 "report/chart": wandb.Image(str(out / "report.png"))})
    finally:
        run.finish()
    return mode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ratlit.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder or a sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="where report.{md,csv,png} go (default: the folder)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and chart to the sweep's W&B group")
    parser.add_argument("--wandb-group", default=None, help="the W&B group (default: the runs' sweep_name)")
    parser.add_argument("--wandb-project", default="ratlit")
    args = parser.parse_args(argv)
    try:
        print(report(args.folder, args.out), end="")
        if args.wandb:
            mode = log_to_wandb(args.folder, args.out or args.folder, args.wandb_group, args.wandb_project)
            print(f"logged the report to W&B ({mode})")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {(args.out or args.folder)}/report.{{md,csv,png}}")


if __name__ == "__main__":
    main()
