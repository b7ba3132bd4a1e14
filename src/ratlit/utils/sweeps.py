"""What a Hydra sweep planned, read back from its own record: ``<sweep folder>/multirun.yaml`` (written by the
sweeper before any job starts) expanded into its jobs with Hydra's own parser and the basic sweeper's own
expansion, so job ``n`` here is the job Hydra numbered ``n``. Also run names that say what varies between a
sweep's jobs, and ``key=value`` overrides parsed by Hydra's parser (never split on ``=`` by hand).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from ratlit.utils.errors import InputError

SWEEP_RECORD = "multirun.yaml"
NAME_LIMIT = 128  # W&B shows names of this length whole
# Overrides that say where things are, not what the run is: left out of names.
_PLACE_KEYS = ("root", "dir", "checkpoint", "sweep_name", "cache_dir", "resume")


@dataclass(frozen=True)
class PlannedJob:
    """One job of a sweep: Hydra's job number and its overrides, as the job receives them."""

    num: int
    overrides: tuple[str, ...]


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``{key: value as typed}`` of ``key=value`` overrides, by Hydra's own parser (``+``/``++``/``~`` prefixes
    dropped from the key; a quoted value or one holding ``=`` comes back whole). A sweep (``a,b``) keeps its text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(item) for item in items])
    out: dict[str, str] = {}
    for override in parsed:
        if override.is_delete() and override.value() is None:
            out[override.key_or_group] = ""
            continue
        if override.is_sweep_override():  # its text as typed, after the key Hydra parsed
            out[override.key_or_group] = str(override.input_line)[len(override.get_key_element()) + 1:]
            continue
        out[override.key_or_group] = override.get_value_element_as_str()
    return out


def planned_jobs(sweep_dir: Path) -> list[PlannedJob] | None:
    """The jobs the sweep in ``sweep_dir`` planned, in Hydra's job order; None when the folder holds no sweep
    record, or one whose sweeper is not Hydra's basic sweeper (whose jobs cannot be listed ahead)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    record = Path(sweep_dir) / SWEEP_RECORD
    if not record.is_file():
        return None
    try:
        saved = OmegaConf.load(record)
    except Exception as err:  # a hand-edited or cut file: the report says so and goes on with what it finds
        raise InputError(f"cannot read {record}: {err}") from err
    sweeper = OmegaConf.select(saved, "hydra.sweeper", default=None)
    if sweeper is None or not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = sweeper.get("params")
    arguments = [f"{k}={v}" for k, v in OmegaConf.to_container(params, resolve=False).items()] if params else []
    arguments += [str(o) for o in OmegaConf.select(saved, "hydra.overrides.task", default=[]) or []]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    return [PlannedJob(num, tuple(job)) for num, job in enumerate(job for batch in batches for job in batch)]


def varying_keys(jobs: list[PlannedJob] | list[list[str]]) -> list[str]:
    """Override keys whose values differ between ``jobs`` (each a PlannedJob or an override list), in the order
    they were given."""
    parsed = [parse_overrides(job.overrides if isinstance(job, PlannedJob) else job) for job in jobs]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def job_folders(sweep_dir: Path) -> dict[int, Path]:
    """``{job number: folder}`` of the jobs that left a folder in ``sweep_dir``, from each folder's Hydra record
    (``.hydra/hydra.yaml``: ``hydra.job.num``), whatever ``hydra.sweep.subdir`` named it."""
    found: dict[int, Path] = {}
    for hydra_yaml in sorted(Path(sweep_dir).glob("*/.hydra/hydra.yaml")):
        try:
            num = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num", default=None)
        except Exception:
            num = None
        if isinstance(num, int):
            found.setdefault(num, hydra_yaml.parent.parent)
    return found


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(overrides: list[str] | tuple[str, ...], varying: list[str] | tuple[str, ...] = (),
             limit: int = NAME_LIMIT) -> str:
    """A run's name from its overrides: the ``varying`` keys first (those that differ between a sweep's jobs),
    then the rest, places (folders, checkpoints) left out. Past ``limit`` characters the tail is replaced by
    ``~<hash>``, a hash of the whole name: names of runs that differ stay different however long they are."""
    items = [str(o) for o in overrides]
    keys = list(parse_overrides(items)) if items else []
    kept = [(k, o) for k, o in zip(keys, items, strict=False)
            if not any(k == p or k.endswith(("." + p, "_" + p)) for p in _PLACE_KEYS)]
    order = list(varying)
    first = [o for k, o in sorted((pair for pair in kept if pair[0] in order), key=lambda pair: order.index(pair[0]))]
    parts = first + [o for k, o in kept if k not in order]
    name = ",".join(parts)
    if len(name) <= limit:
        return name
    tail = "~" + _short_hash(name)
    shown = ""
    for part in parts:  # whole overrides while they fit; the hash stands for the rest
        if len(shown) + len(part) + 1 + len(tail) > limit:
            break
        shown += part + ","
    return (shown.rstrip(",") if shown else name[: limit - len(tail)]) + tail
