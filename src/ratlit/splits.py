"""The split of a run: which groups (patient folders for CT, volume names for PET, image names for pathology)
trained, validated and tested it.

``train`` saves it as ``<run>/splits.json`` and as ``data.splits`` of the run config (so the checkpoint,
which carries the config, holds it too; a resume keeps it). ``evaluate`` uses it, and refuses to score a
group the model trained on (or was selected on) unless told to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ratlit.data.base import SPLITS
from ratlit.utils.files import write_text_atomic

SPLITS_FILE = "splits.json"


def groups_by_split(datamodule: Any) -> dict[str, list[str]]:
    """The groups of each split as the DataModule resolved them (a given split, the data's splits.json,
    or the seeded split)."""
    datamodule.split_samples("train")  # resolves all three splits at once
    return {name: list(datamodule.split_groups[name]) for name in SPLITS}


def save_run_splits(run_dir: Path, splits: Mapping[str, Sequence[str]]) -> Path:
    path = Path(run_dir) / SPLITS_FILE
    write_text_atomic(path, json.dumps({k: list(splits[k]) for k in SPLITS}, indent=2) + "\n")
    return path


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
        raise ValueError(
            f"the {split} split of this data holds groups that the run of {run} used for training ({named}). "
            f"Use the run's own split (data.splits=<run>/{SPLITS_FILE}), give a split without them, or pass "
            f"allow_train_overlap=true to score them anyway"
        )
