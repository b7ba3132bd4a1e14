"""The report's tables: one row per run group (``report.md``), the paired comparison against a reference
(``paired.md``, ``paired.csv``) and one number per cell (``report.csv``)."""

from __future__ import annotations

from math import isfinite, nan
from typing import Any

from ratlit.analysis.paired import (
    METRICS,
    MIN_EFFECT,
    RESAMPLES,
    RULE,
    compare,
    decimals,
    group_note,
    image_set_note,
)
from ratlit.analysis.runs import planned_runs, run_overrides, summarise, variant_scores
from ratlit.utils.errors import InputError
from ratlit.utils.sweeps import parse_overrides
from ratlit.utils.tables import markdown_cell


def _cell(score: dict[str, float] | None, digits: int) -> str:
    if score is None:
        return "n/a"
    text = f"{score['mean']:.{digits}f} ± {score['image_std']:.{digits}f}"
    return text + (f" (seeds ± {score['seed_std']:.{digits}f})" if score["count"] > 1 else "")


def runs_cell(entry: dict[str, Any], jobs: list[dict[str, Any]] | None) -> str:
    """How many runs a row rests on: ``3``, or ``2 of 3`` where its sweep planned more (failed or missing)."""
    planned = planned_runs(entry, jobs or [])
    count = len(entry["runs"])
    return f"{count} of {planned}" if planned and planned > count else str(count)


def table_rows(runs: list[dict[str, Any]], jobs: list[dict[str, Any]] | None = None
               ) -> tuple[list[str], list[list[str]]]:
    """Header and rows: run, distinguishing overrides, the partitioner that ran (``partition_used``: a
    ``partition=`` override may differ where a fallback ran), how many runs (seeds) the row rests on (``2 of 3``
    where its sweep planned more: ``jobs``), test PSNR / SSIM (mean ± std over images; with several seeds also ±
    std over seeds) and the gain over the input (LQ) on the same images."""
    keys, entries = summarise(runs)
    header = ["run", *keys, "partition_used", "runs", "test PSNR", "PSNR gain", "test SSIM", "SSIM gain"]
    rows = []
    for e in entries:
        if e["is_input"]:
            rows.append([e["label"], *("" for _ in keys), "", "", _cell(e["psnr"], 4), "0", _cell(e["ssim"], 4), "0"])
            continue
        gains = []
        for name in ("psnr", "ssim"):
            base = e[f"input_{name}"]
            gains.append(f"{e[name]['mean'] - base['mean']:+.4f}" if e[name] and base else "n/a")
        rows.append([e["label"], *(e["keys"][k] for k in keys), e["partition_used"], runs_cell(e, jobs),
                     _cell(e["psnr"], 4), gains[0], _cell(e["ssim"], 4), gains[1]])
    return header, rows


def jobs_markdown(jobs: list[dict[str, Any]]) -> str:
    """The sweeps' accounting: how many jobs each planned and how they ended, one line per job not finished."""
    if not jobs:
        return ""
    lines = []
    for sweep in dict.fromkeys(j["sweep"] for j in jobs):
        mine = [j for j in jobs if j["sweep"] == sweep]
        counts = {s: sum(j["status"] == s for j in mine) for s in dict.fromkeys(j["status"] for j in mine)}
        what = f"sweep {sweep or '.'}: {len(mine)} jobs planned" if sweep else "runs outside a sweep record"
        lines.append(f"{what}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        lines += [f"- job {j['num']} ({j['run']}) {j['status']}: {j['reason']}" if j["num"] is not None else
                  f"- {j['run']} {j['status']}: {j['reason']}" for j in mine if j["status"] != "finished"]
    return "\n".join(lines) + "\n"


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
            wanted = parse_overrides([item.strip() for item in reference.split(",")])
            match = [e for e in rows if all(str({**(e["runs"][0].get("columns") or {}), **run_overrides(e["runs"][0])}
                                                .get(k)) == v for k, v in wanted.items())]
        else:
            match = [e for e in rows if reference.rstrip("/") in (e["label"], *(r["run"] for r in e["runs"]))]
        if len(match) > 1:
            raise InputError(f"--reference {reference} matches {len(match)} rows of task {task} "
                             f"({', '.join(e['label'] for e in match)}); name more overrides (key=value,key=value)")
        if match:
            chosen[task] = match[0]
    if not chosen:
        raise InputError(f"--reference {reference} matches no run: give key=value as in the runs' overrides "
                         "(e.g. attention=msa), a run folder, or input")
    return chosen


def paired_table(runs: list[dict[str, Any]], reference: str | None = None, resamples: int = RESAMPLES,
                 seed: int = 0, min_effect: dict[str, float] | None = None
                 ) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """The distinguishing keys, one row per (row of the report but the reference, metric) with the paired
    statistics against the reference of its task (``paired.compare``, against ``min_effect[metric]``, default
    ``MIN_EFFECT``), and notes on mismatched image sets and intervals that rest on one group."""
    effects = {**MIN_EFFECT, **(min_effect or {})}
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
                         "verdict": "n/a (no test_results.csv)", "images": 0, "groups": 0, "seeds": len(e["runs"]),
                         "reference_seeds": len(ref["runs"]) if ref else 1, "seeds_left_out": 0, "seed_pairing": "",
                         "min_effect": effects[metric], "interval_over": ""}
            else:
                stats = compare(scores, ref_scores, metric, resamples, seed, min_effect=effects[metric])
            rows.append({**base, "metric": metric, **stats})
        note = group_note(e["label"], rows[-1]) if rows else None
        notes += [note] if note else []
    return keys, rows, notes


PAIRED_COLUMNS = ["mean", "std", "ci_low", "ci_high", "min_effect", "wilcoxon_p", "verdict", "images", "groups",
                  "seeds", "reference_seeds", "seeds_left_out", "seed_pairing", "interval_over"]


def _num(value: Any) -> str:
    """One number per CSV cell ('' for none), at full precision; text stays text."""
    if value is None or (isinstance(value, float) and not isfinite(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def paired_csv_rows(keys: list[str], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "run", *keys, "partition_used", "reference", "metric", *PAIRED_COLUMNS]
    return header, [[_num(r.get(c, "")) for c in header] for r in rows]


def paired_markdown(rows: list[dict[str, Any]], notes: list[str]) -> str:
    """The paired table, readable: difference [95% interval], p-value, verdict; its rule and the notes."""
    lines = [f"Paired per-image differences against the reference (mean [95% hierarchical bootstrap interval over "
             f"groups (patients / slides), images and seeds]); {RULE}. Seeds are paired where both sides ran them; "
             "only pairs present on both sides are compared.", "",
             "| run | reference | metric | difference | 95% interval | min effect | Wilcoxon p | verdict | images | "
             "groups | seeds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        digits = decimals(r["ci_low"], r["ci_high"], r["min_effect"], least=4 if r["metric"] == "psnr" else 5)
        diff = f"{r['mean']:+.{digits}f}" if isfinite(r["mean"]) else "n/a"
        interval = f"[{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]" if isfinite(r["ci_low"]) else "n/a"
        p = f"{r['wilcoxon_p']:.3g}" if isfinite(r["wilcoxon_p"]) else "n/a"
        seeds = f"{r['seeds']} vs {r['reference_seeds']}" + (f" {r['seed_pairing']}" if r["seed_pairing"] else "")
        seeds += f" ({r['seeds_left_out']} without a pair left out)" if r.get("seeds_left_out") else ""
        cells = [r["run"], r["reference"], r["metric"].upper(), diff, interval, f"±{r['min_effect']:g}", p,
                 r["verdict"], r["images"], r["groups"], seeds]
        lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    return "\n".join(lines + [f"\nwarning: {n}" for n in notes]) + "\n"


def numeric_rows(runs: list[dict[str, Any]], gains: dict[tuple[str, str], dict[str, Any]] | None = None
                 ) -> tuple[list[str], list[list[str]]]:
    """``report.csv``: one number per cell; the gain over the input with its paired 95% interval where the
    runs' per-image scores are there (``gains[(row label, metric)]``: ``paired.compare`` against the input)."""
    keys, entries = summarise(runs)
    header = ["task", "run", *keys, "partition_used", "runs"]
    for m in METRICS:
        header += [f"{m}_mean", f"{m}_std_images", f"{m}_std_seeds", f"{m}_gain", f"{m}_gain_ci_low",
                   f"{m}_gain_ci_high"]
    header.append("images")
    rows = []
    for e in entries:
        seeds = "" if e["is_input"] else str(len(e["runs"]))  # a number per cell: report.md says "2 of 3"
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
