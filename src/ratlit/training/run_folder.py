"""Run folders: absolute data paths in the saved config, one run per folder, and resume in the folder given
(a copied run folder is a run of its own, with its paths and its callbacks' state moved into it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from ratlit.training.checkpoint import load_checkpoint, upgrade_run_config
from ratlit.utils.config import overrides, user_path

DATA_PATH_KEYS = ("root", "splits", "cache_dir")
_ABSENT = object()


def absolute_data_paths(data: DictConfig, base: Path | None = None) -> None:
    """Make the path values of a data config (root, a splits file, cache_dir) absolute, in place, so the
    saved run config still points at the data from any other working directory."""
    with open_dict(data):
        for key in DATA_PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value:
                data[key] = str(user_path(value, base))


def refuse_used_run_dir(run_dir: Path) -> None:
    """A new run never starts in another run's folder: its last.ckpt, metrics and results would mix with this
    one's (and a later resume would continue the wrong weights)."""
    checkpoints = run_dir / "checkpoints"
    used = (run_dir / "config.yaml").exists() or (checkpoints.is_dir() and any(checkpoints.iterdir()))
    if used:
        raise ValueError(f"run folder {run_dir} already holds a run: resume={run_dir} continues it; for a new run "
                         "give another folder (hydra.run.dir=...) or remove that one")


def resumed_config(cfg: DictConfig) -> tuple[DictConfig, str, str]:
    """The saved config of the run folder ``cfg.resume`` (with this call's value overrides, and its paths
    moved into that folder), its last checkpoint, and the folder the run was made in (differs for a copy)."""
    run_dir = user_path(str(cfg.resume))
    saved, last = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved.is_file():
        raise ValueError(f"resume={run_dir}: no config.yaml there; give the folder of a ratlit run")
    if not last.is_file():
        raise ValueError(f"resume={run_dir}: no checkpoints/last.ckpt to resume from")
    load_checkpoint(last)  # a foreign, unsafe or truncated file: one line here, not a traceback from Lightning
    old = upgrade_run_config(OmegaConf.load(saved))
    # Paths the saved (resolved) config holds into its own folder follow it: a copied folder resumes in
    # the copy and never writes into the original.
    made_in = str(old.get("run_dir") or run_dir)
    old = relocate(old, made_in, str(run_dir))
    with open_dict(old):
        old.run_dir = str(run_dir)
        old.resume = str(run_dir)
        # Other overrides change values of the resumed run, e.g. trainer.max_steps=400000 to train longer.
        for item in overrides():
            key, _, value = item.partition("=")
            key = key.lstrip("+~")
            if key == "resume":
                continue
            if OmegaConf.select(old, key, default=_ABSENT) is _ABSENT:
                raise ValueError(f"resume: {item!r} names no value of the saved run config; "
                                 f"only existing values (e.g. trainer.max_steps=...) can change on resume")
            OmegaConf.update(old, key, yaml.safe_load(value), merge=True)
    return old, str(last), made_in


def relocate(cfg: DictConfig, old_dir: str, new_dir: str) -> DictConfig:
    """``cfg`` with every string that points into ``old_dir`` (checkpoint folder, logger save_dir, ...)
    pointing into ``new_dir`` instead: a copied run folder resumes in itself, never in the original."""
    old, new = str(old_dir).rstrip("/"), str(new_dir).rstrip("/")
    if old == new:
        return cfg
    return OmegaConf.create(_moved(OmegaConf.to_container(cfg), old, new))  # a saved run config is resolved


def _moved(value: Any, old: str, new: str) -> Any:
    """``value`` (plain containers) with strings equal to ``old`` or below it moved below ``new``."""
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    if isinstance(value, dict):
        return {_moved(k, old, new): _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, old, new) for v in value)
    return value


class RelocateCheckpointState(Callback):
    """Resuming a copied run folder: the callbacks' saved state (ModelCheckpoint's dirpath, best and last
    paths) points into the original folder; map it into the copy before Lightning restores it, so the copy
    keeps its best checkpoint and nothing ever replaces or deletes a file of the original."""

    def __init__(self, old_dir: str, new_dir: str) -> None:
        self.old, self.new = str(old_dir).rstrip("/"), str(new_dir).rstrip("/")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if "callbacks" in checkpoint:
            checkpoint["callbacks"] = _moved(checkpoint["callbacks"], self.old, self.new)
