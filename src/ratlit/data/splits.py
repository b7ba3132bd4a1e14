"""Splits: which groups (patient folders for CT, volume names for PET, image or slide names for pathology)
train, validate and test a model; read, made, written and checked here and nowhere else.

A split is ``data.splits`` (a mapping or a JSON/YAML file), else ``<root>/splits.json``, else made from
the groups' names (``split_groups``): each group goes to a split by a hash of its name and ``split_seed``,
so adding groups to a data set never moves a group that is already there. ``data.group_by`` (a regex)
makes one group of the files of one slide or patient (``group_names``).

``train`` saves the split it used as ``<run>/splits.json`` and as ``data.splits`` of the run config (so the
checkpoint, which carries the config, holds it too; a resume keeps it). ``evaluate`` uses it, and refuses
to score a group the model trained on (or was selected on) unless told to. Runs made before the hash rule
keep their recorded split: it is read back, never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ratlit.utils.errors import InputError
from ratlit.utils.files import write_text_atomic

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"


# --- reading and writing ------------------------------------------------------------------------------


def read_splits(source: str | os.PathLike | Mapping | None) -> dict[str, list[str]] | None:
    """Splits from a mapping or a JSON/YAML file: ``{"train": [groups], "val": [...], "test": [...]}``."""
    if source is None:
        return None
    if not isinstance(source, Mapping):
        path = Path(source).expanduser()
        try:
            text = path.read_text()
        except OSError as err:
            raise InputError(f"cannot read split file {path}: {err}") from err
        try:
            import yaml

            source = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        except Exception as err:
            raise InputError(f"split file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {err}") from err
        if not isinstance(source, Mapping):
            raise InputError(f"split file {path} must map split names to lists of groups")
    unknown = set(source) - set(SPLITS)
    if unknown:
        raise InputError(f"splits has unknown names {sorted(unknown)}; use {list(SPLITS)}")
    for name in SPLITS:
        if isinstance(source.get(name), (str, bytes)) or not isinstance(source.get(name) or [], Sequence):
            raise InputError(f"splits: {name!r} must be a list of group names, got {source.get(name)!r}")
    return {name: [str(g) for g in source.get(name) or []] for name in SPLITS}


def write_splits(folder: str | os.PathLike, splits: Mapping[str, Sequence[str]]) -> Path:
    """Write ``<folder>/splits.json`` (a data folder's default split, or the split a run used)."""
    path = Path(folder) / SPLITS_FILE
    write_text_atomic(path, json.dumps({k: list(splits.get(k, [])) for k in SPLITS}, indent=2) + "\n")
    return path


# --- grouping files -----------------------------------------------------------------------------------


def group_pattern(group_by: str | None) -> re.Pattern | None:
    """The compiled ``data.group_by`` regex (None: no grouping); one clear error when it does not compile."""
    if not group_by:
        return None
    try:
        return re.compile(group_by)
    except re.error as err:
        raise InputError(f"data.group_by={group_by!r} is not a valid regular expression: {err}") from err


def group_names(names: Sequence[str], group_by: str | None) -> dict[str, str]:
    """``{name: group}``: with a regex ``group_by``, a name's group is the regex's first capture group (or its
    whole match) searched in the name; a name it does not match, or matches empty, stays its own group (so a
    folder may mix tiles of slides with whole images)."""
    pattern = group_pattern(group_by)
    if pattern is None:
        return {name: name for name in names}
    groups, unmatched = {}, []
    for name in names:
        match = pattern.search(name)
        group = (match.group(1) if pattern.groups else match.group(0)) if match else None
        if not group:
            unmatched.append(name)
        groups[name] = group or name
    log.info("data.group_by=%r: %d name(s) in %d group(s); %d unmatched kept as their own group%s", group_by,
             len(groups), len(set(groups.values())), len(unmatched),
             f" ({_listing(unmatched, 10)})" if unmatched else "")
    return groups


# --- making a split -----------------------------------------------------------------------------------


def group_position(group: str, seed: int) -> float:
    """Where a group falls in [0, 1): a hash of its name and the seed, the same on every machine and run."""
    digest = hashlib.sha256(f"ratlit-split\0{seed}\0{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _listing(names: Sequence[str], limit: int = 50) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _given_split(groups: list[str], splits: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    seen: dict[str, str] = {}
    for name in SPLITS:
        for g in splits.get(name, []):
            if g in seen:
                raise InputError(f"group {g!r} is in both the {seen[g]} and the {name} split")
            seen[g] = name
    missing = sorted(set(seen) - set(groups))
    if missing:
        raise InputError(
            f"splits name {len(missing)} group(s) that are not in the data: {missing[:10]}; "
            f"the data's groups are: {_listing(groups)}"
        )
    unlisted = [g for g in groups if g not in seen]
    if unlisted:
        log.warning("%d group(s) of the data are in no split and are left out: %s", len(unlisted), _listing(unlisted))
    return {name: [g for g in groups if seen.get(g) == name] for name in SPLITS}


def split_groups(
    groups: Sequence[str],
    splits: Mapping[str, Sequence[str]] | None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Assign every group to exactly one split; never a patient in two splits.

    Given ``splits`` are checked and used. Otherwise a group at ``group_position`` p is test if
    p < test_fraction, val if p < test_fraction + val_fraction, else train: a function of the name and seed
    alone, so groups added later never move an existing one, and each split holds its fraction in expectation.
    Few groups: with 3 or more, a split whose fraction is > 0 but that the hash leaves empty borrows the group
    nearest to its band from the largest split (a warning names it); that borrowed group alone may go back
    when added groups fill the split by hash (pin a split with ``data.splits=<run>/splits.json``).
    """
    groups = sorted(set(groups))
    if splits is not None:
        return _given_split(groups, splits)
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise InputError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 "
                         f"and leave a train fraction > 0")
    bands = {"test": (0.0, test_fraction), "val": (test_fraction, test_fraction + val_fraction),
             "train": (test_fraction + val_fraction, 1.0)}
    position = {g: group_position(g, seed) for g in groups}
    assigned: dict[str, list[str]] = {name: [] for name in SPLITS}
    for g in groups:
        assigned[next(name for name, (low, high) in bands.items() if position[g] < high or name == "train")].append(g)
    if len(groups) >= 3:
        for name in ("test", "val", "train"):
            low, high = bands[name]
            if assigned[name] or high <= low:
                continue
            donor = max((s for s in SPLITS if len(assigned[s]) >= 2), key=lambda s: (len(assigned[s]), s == "train"))
            moved = min(assigned[donor], key=lambda g: (max(low - position[g], position[g] - high, 0.0), g))
            assigned[donor].remove(moved)
            assigned[name].append(moved)
            log.warning("only %d groups: the hash left the %s split empty, so it takes %r from %s; a group added "
                        "later may take its place (data.splits pins a split)", len(groups), name, moved, donor)
    return {name: sorted(assigned[name]) for name in SPLITS}


def warn_on_people_in_several_splits(samples: Sequence[Any], assigned: Mapping[str, Sequence[str]]) -> None:
    """Warn where one patient id (``sample.person``) spans groups in different splits (e.g. one folder per
    study of one person)."""
    split_of = {g: name for name, groups in assigned.items() for g in groups}
    groups_of: dict[str, set[str]] = {}
    for sample in samples:
        if sample.person:
            groups_of.setdefault(sample.person, set()).add(sample.group)
    for person, groups in sorted(groups_of.items()):
        splits = {g: split_of[g] for g in sorted(groups) if g in split_of}
        if len(set(splits.values())) > 1:
            log.warning(
                "patient id %r is in several splits (%s): if these folders are one person, put them in one folder "
                "or give data.splits, so that no test patient is trained on", person,
                ", ".join(f"{g}: {split}" for g, split in splits.items()),
            )


# --- the split of a run -------------------------------------------------------------------------------


def groups_by_split(datamodule: Any) -> dict[str, list[str]]:
    """The groups of each split as the DataModule resolved them (a given split, the data's splits.json,
    or the seeded split)."""
    datamodule.split_samples("train")  # resolves all three splits at once
    return {name: list(datamodule.split_groups[name]) for name in SPLITS}


def saved_splits(run_cfg: DictConfig) -> dict[str, list[str]] | None:
    """The split recorded in a run config (``data.splits`` as a mapping), or None for runs made before
    splits were recorded (or with a split file path)."""
    splits = OmegaConf.select(run_cfg, "data.splits", default=None)
    if not isinstance(splits, (DictConfig, Mapping)):
        return None
    splits = OmegaConf.to_container(splits) if isinstance(splits, DictConfig) else dict(splits)
    return {name: [str(g) for g in splits.get(name) or []] for name in SPLITS}


def seen_in_training(saved: Mapping[str, Sequence[str]], split: str, groups: Sequence[str]) -> dict[str, list[str]]:
    """The evaluated ``groups`` that the run trained on, or (when evaluating ``test``) selected its best
    checkpoint on: ``{"train": [...], "val": [...]}``, empty lists when clean."""
    used = ("train", "val") if split == "test" else ("train",)
    chosen = set(groups)
    return {name: sorted(chosen & set(saved.get(name, []))) for name in used}


def check_not_seen(saved: Mapping[str, Sequence[str]], split: str, groups: Sequence[str], run: str) -> None:
    """Raise ValueError naming every evaluated group the run of ``run`` trained (or was selected) on."""
    leaks = {name: found for name, found in seen_in_training(saved, split, groups).items() if found}
    if leaks:
        named = "; ".join(f"{len(found)} in its {name} split: {found}" for name, found in leaks.items())
        raise InputError(
            f"the {split} split of this data holds groups that the run of {run} used for training ({named}). "
            f"Use the run's own split (data.splits=<run>/{SPLITS_FILE}), give a split without them, or pass "
            f"allow_train_overlap=true to score them anyway"
        )
