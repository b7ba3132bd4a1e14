"""Gather runs into a paper-style table: ``python -m ratlit.report <run or sweep folder> [--out DIR]``.

One row per run (every ``results.json`` below the folder): the overrides that distinguish the runs, then
test PSNR and SSIM as mean ± std over images. Writes ``report.md``, ``report.csv`` and ``report.png``
(a bar chart with standard deviations) into the folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from ratlit.files import atomic_output, write_text_atomic


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


def table_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    keys = distinguishing(runs)
    header = ["run", *keys, "partition", "test PSNR", "test SSIM"]
    rows = []
    for run in runs:
        overrides = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in run.get("overrides", []) if "=" in o}
        test = run.get("test") or {}
        psnr = f"{test['psnr']:.4f} ± {test['psnr_std']:.4f}" if test.get("psnr") is not None else "n/a"
        ssim = f"{test['ssim']:.4f} ± {test['ssim_std']:.4f}" if test.get("ssim") is not None else "n/a"
        rows.append([run["run"], *(overrides.get(k, "") for k in keys), run.get("partition", {}).get("name", ""), psnr, ssim])
    return header, rows


def bar_chart(runs: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(runs) + 3), 4))
    for ax, name in zip(axes, ("psnr", "ssim")):
        values = [(r.get("test") or {}).get(name) or 0.0 for r in runs]
        errors = [(r.get("test") or {}).get(f"{name}_std") or 0.0 for r in runs]
        ax.bar(range(len(runs)), values, yerr=errors, capsize=4, color="tab:blue")
        ax.set_xticks(range(len(runs)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"test {name.upper()}")
        low = min(v - e for v, e in zip(values, errors))
        high = max(v + e for v, e in zip(values, errors))
        ax.set_ylim(low - 0.1 * (high - low + 1e-6), high + 0.1 * (high - low + 1e-6))
    fig.tight_layout()
    with atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def report(folder: Path, out: Path | None = None) -> str:
    runs = load_runs(folder)
    header, rows = table_rows(runs)
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    ) + "\n"
    write_text_atomic(out / "report.md", markdown)
    text = io.StringIO()
    csv.writer(text).writerows([header, *rows])
    write_text_atomic(out / "report.csv", text.getvalue())
    keys = header[1:-3]
    labels = [",".join(r[1 : 1 + len(keys)]) or r[0] for r in rows]
    bar_chart(runs, labels, out / "report.png")
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ratlit.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder or a sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="where report.{md,csv,png} go (default: the folder)")
    args = parser.parse_args(argv)
    try:
        print(report(args.folder, args.out), end="")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {(args.out or args.folder)}/report.{{md,csv,png}}")


if __name__ == "__main__":
    main()
