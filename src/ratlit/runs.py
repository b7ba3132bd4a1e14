"""Run folders that keep their history: absolute data paths in the saved config, resume in the folder given
(a copied run folder is a run of its own), CSV logs that append, W&B runs that resume, and a last
validation so that every run has a best checkpoint.
"""

from __future__ import annotations

import csv
import os
import secrets
import string
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf, open_dict

DATA_PATH_KEYS = ("root", "splits", "cache_dir")


def absolute_path(value: str, base: Path) -> str:
    """``value`` with a leading ``~`` expanded and made absolute against ``base``."""
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else (base / path).absolute())


def absolute_data_paths(data: DictConfig, base: Path) -> None:
    """Make the path values of a data config (root, a splits file, cache_dir) absolute, in place, so the
    saved run config still points at the data from any other working directory."""
    with open_dict(data):
        for key in DATA_PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value:
                data[key] = absolute_path(value, base)


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


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one keeps its rows and
    appends (a new column rewrites the file with the old rows under the widened header)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)


class AppendingCSVLogger(CSVLogger):
    """``lightning``'s CSVLogger whose ``metrics.csv`` survives a resume: steps 0..N stay, N..M follow."""

    @property
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_id(cfg: DictConfig) -> None:
    """Give the run's W&B logger a fixed run id (kept in the saved config), so a resume continues the
    same W&B run (``resume="allow"``) instead of starting another."""
    node = OmegaConf.select(cfg, "logger.wandb", default=None)
    if node is None or not str(node.get("_target_", "")).endswith("WandbLogger"):
        return
    with open_dict(node):
        if not node.get("id"):  # W&B's own form: 8 characters of [a-z0-9]
            node.id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        node.resume = "allow"


class ValidateAtEnd(Callback):
    """Validate on the last training step when the ``val_check_interval`` schedule would not: a run shorter
    than the interval (or ending between two checks) still gets validated, and so a best checkpoint."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loop = trainer.fit_loop
        last_step = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        last_epoch = (
            trainer.max_epochs not in (None, -1)
            and trainer.current_epoch + 1 >= trainer.max_epochs
            and loop.epoch_loop.batch_progress.is_last_batch
        )
        if (last_step or last_epoch) and not trainer.should_stop:
            # Lightning validates a step at which the trainer is asked to stop (as for early stopping).
            trainer.should_stop = True
