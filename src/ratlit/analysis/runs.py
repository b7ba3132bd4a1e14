"""The runs a report gathers: every ``results.json`` below a folder, the overrides that tell them apart, runs
that differ only in ``seed`` grouped into one row, and each row's scores (summary and per image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ratlit.analysis.paired import Scores, read_per_image
from ratlit.training.sweep_jobs import job_status, sweep_accounting
from ratlit.utils.errors import InputError
from ratlit.utils.sweeps import SWEEP_RECORD, parse_overrides


def _relative(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder)) if path != folder else path.name


def load_runs(folder: Path, jobs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The finished runs below ``folder`` (every ``results.json`` but a failed job's). ``jobs``: the accounting
    (:func:`account_jobs`), to say what else there is when no run finished."""
    if not folder.exists():
        raise InputError(f"{folder} does not exist")
    runs = []
    for path in sorted(folder.rglob("results.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read {path}: {err}") from err
        if result.get("status") == "failed":
            continue
        result["run"] = _relative(path.parent, folder)
        result["_dir"] = str(path.parent)  # where its test_results.csv is
        runs.append(result)
    if not runs:
        others = "; ".join(f"{j['run']}: {j['status']} ({j['reason']})" for j in jobs or [])
        raise InputError(f"no finished runs (results.json) under {folder}" + (f"; {others}" if others else ""))
    return runs


def account_jobs(folder: Path) -> list[dict[str, Any]]:
    """Every job of every sweep below ``folder`` (each sweep's own record, ``multirun.yaml``): ``sweep``, ``num``,
    ``run`` (its folder, or where it would be), ``overrides``, ``status`` (finished, failed, incomplete, running,
    missing) and ``reason``; and failed runs outside any sweep record."""
    jobs, seen = [], set()
    for record in sorted(Path(folder).rglob(SWEEP_RECORD)):
        sweep = record.parent
        for job in sweep_accounting(sweep) or []:
            where = job["folder"] or sweep / str(job["num"])
            seen.add(str(where))
            jobs.append({**job, "sweep": _relative(sweep, folder), "run": _relative(where, folder)})
    for path in sorted(Path(folder).rglob("results.json")):
        if str(path.parent) not in seen:
            status, reason = job_status(path.parent)
            if status != "finished":
                jobs.append({"sweep": "", "num": None, "run": _relative(path.parent, folder), "status": status,
                             "reason": reason, "overrides": [], "folder": path.parent})
    return jobs


def distinguishing(runs: list[dict[str, Any]]) -> list[str]:
    """Override keys whose values differ between runs (all of them for a single run)."""
    parsed = [run_overrides(run) for run in runs]
    keys = sorted({k for p in parsed for k in p})
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def run_overrides(run: dict[str, Any]) -> dict[str, str]:
    """A run's overrides as ``{key: value}``, parsed by Hydra's own override parser."""
    return parse_overrides(run.get("overrides") or [])


def group_seeds(runs: list[dict[str, Any]], keys: list[str]) -> list[list[dict[str, Any]]]:
    """Runs that differ only in ``seed`` form one group (first-seen order)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        over = run_overrides(run)
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
        over = run_overrides(group[0])
        name = group[0].get("name") or group[0]["run"]  # the run's name: as in its folder's results and in W&B
        entries.append({
            "label": name if len(group) == 1 else f"{name} (+{len(group) - 1} seeds)",
            "task": group[0].get("task"), "keys": {k: over.get(k, "") for k in keys}, "runs": group,
            "partition_used": (group[0].get("partition") or {}).get("name", ""), "is_input": False,
            "psnr": _score(group, "test", "psnr"), "ssim": _score(group, "test", "ssim"),
            "input_psnr": _score(group, "input", "psnr"), "input_ssim": _score(group, "input", "ssim"),
        })
    labels = [e["label"] for e in entries]
    for e in entries:  # names from before names were unique (cut at 128 characters): the folder tells them apart
        if labels.count(e["label"]) > 1 and not e["is_input"]:
            e["label"] = e["runs"][0]["run"] + (f" (+{len(e['runs']) - 1} seeds)" if len(e["runs"]) > 1 else "")
    return keys, entries


def planned_runs(entry: dict[str, Any], jobs: list[dict[str, Any]]) -> int | None:
    """How many of the accounted sweep ``jobs`` belong to a row (the row's override values, any seed); None
    without an accounting."""
    if not jobs or entry["is_input"]:
        return None
    count = 0
    for job in jobs:
        if not job.get("overrides"):
            continue
        given = parse_overrides(job["overrides"])
        count += all(given.get(k, "") == v for k, v in entry["keys"].items())
    return count or None


def _seed(run: dict[str, Any]) -> str | None:
    seed = run_overrides(run).get("seed", (run.get("columns") or {}).get("seed"))
    return None if seed is None else str(seed)


def variant_scores(entry: dict[str, Any]) -> Scores | None:
    """The per-image test scores of a row's runs (None when a run has no ``test_results.csv``)."""
    paths = [Path(run["_dir"]) / "test_results.csv" for run in entry["runs"]]
    if not all(p.is_file() for p in paths):
        return None
    return Scores([read_per_image(p) for p in paths], [_seed(r) for r in entry["runs"]])
