"""Run folders: absolute data paths in the saved config, one run per folder, and resume in the folder given
(a copied run folder is a run of its own, with its paths and its callbacks' state moved into it)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from ratlit.data.splits import write_splits
from ratlit.training.run_loading import load_checkpoint, upgrade_run_config
from ratlit.utils.config import overrides, user_path
from ratlit.utils.errors import InputError
from ratlit.utils.files import write_text_atomic
from ratlit.utils.trusted_targets import CONFIG_KEY, check_targets, listed, trusted_entries

DATA_PATH_KEYS = ("root", "splits", "cache_dir")
_ABSENT = object()
# What a resumed run may change (a key or the node above it): how long and how often, the learning rate, where
# the data lies, how it is logged and run. Not the network, the loss, the data or its split: those are the run's.
RESUMABLE = ("trainer.max_steps", "trainer.val_check_interval", "trainer.limit_val_batches",
             "trainer.limit_test_batches", "trainer.log_every_n_steps", "trainer.num_sanity_val_steps",
             "trainer.devices", "trainer.accelerator", "trainer.num_nodes", "model.optimizer.lr", "model.compile",
             "model.compile_memory_budget", "model.cuda_graph", "model.cuda_graph_warmup", "data.root",
             "data.cache_dir", "data.num_workers", "data.in_memory", "logger", "callbacks", "checkpoint_every_n_steps",
             "test_after_fit", "tags", "float32_matmul_precision")
# Runs saved with torch's recursive cosine (it keeps the old length and rises past it) resume with the closed form.
_RESUMED_SCHEDULERS = {"torch.optim.lr_scheduler.CosineAnnealingLR": "ratlit.training.schedule.CosineToEnd"}


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
    one's (and a later resume would continue the wrong weights). A folder is used once a run's first optimiser
    step wrote its config.yaml (:class:`RunConfigFiles`) or a checkpoint is there."""
    checkpoints = run_dir / "checkpoints"
    used = (run_dir / "config.yaml").exists() or (checkpoints.is_dir() and any(checkpoints.iterdir()))
    if used:
        raise InputError(f"run folder {run_dir} already holds a run: resume={run_dir} continues it; for a new run "
                         "give another folder (hydra.run.dir=...) or remove that one")


class RunConfigFiles(Callback):
    """``config.yaml`` and ``splits.json`` of a run, written by rank 0 when its first optimiser step is done (or at
    once with :meth:`write`, for a continued run): a run that fails before training (a bad data folder, a
    diverging first step) leaves a folder that the same command may start again."""

    def __init__(self, run_dir: Path, config_yaml: str, splits: dict[str, list[str]]) -> None:
        self.run_dir, self.config_yaml, self.splits = Path(run_dir), config_yaml, splits
        self.written = False

    def write(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "config.yaml", self.config_yaml)
        write_splits(self.run_dir, self.splits)
        self.written = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self.written and trainer.is_global_zero:
            self.write()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_batch_end(trainer)


def resumed_config(cfg: DictConfig) -> tuple[DictConfig, str, str]:
    """The saved config of the run folder ``cfg.resume`` (with this call's value overrides, and its paths
    moved into that folder), its last checkpoint, and the folder the run was made in (differs for a copy).

    Both files are checked before anything is built (:mod:`ratlit.utils.trusted_targets`) against what this call
    trusts (``cfg.trusted_targets`` and ``$RATLIT_TRUSTED_TARGETS``), never against what the folder says."""
    run_dir = user_path(str(cfg.resume))
    saved, last = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved.is_file():
        if (run_dir / ".hydra" / "overrides.yaml").is_file():  # a run started there (Hydra's record of it)
            raise InputError(f"resume={run_dir}: the run there stopped before its first training step, so there is "
                             f"nothing to continue; start it again in that folder (hydra.run.dir={run_dir})")
        raise InputError(f"resume={run_dir}: no config.yaml there; give the folder of a ratlit run")
    if not last.is_file():
        raise InputError(f"resume={run_dir}: no checkpoints/last.ckpt to resume from")
    own = listed(cfg.get(CONFIG_KEY))
    trusted = trusted_entries(own)
    # A foreign, unsafe or truncated file: one line here, not a traceback from Lightning.
    load_checkpoint(last, trusted)
    old = upgrade_run_config(OmegaConf.load(saved))
    # Paths the saved (resolved) config holds into its own folder follow it: a copied folder resumes in
    # the copy and never writes into the original.
    made_in = str(old.get("run_dir") or run_dir)
    old = relocate(old, made_in, str(run_dir))
    with open_dict(old):
        old.run_dir = str(run_dir)
        old.resume = str(run_dir)
        # Other overrides change values of the resumed run, e.g. trainer.max_steps=400000 to train longer.
        # (this call's trusted_targets is not a value of the run: it is what this call trusts, checked below)
        apply_resume_overrides(old, [o for o in overrides()
                                     if o.partition("=")[0].lstrip("+~") not in ("resume", CONFIG_KEY)])
    check_targets(old, str(saved), trusted)  # after the moved and resumed names are mapped
    with open_dict(old):
        old[CONFIG_KEY] = own  # recorded from here on: what this call trusted
    return old, str(last), made_in


def apply_resume_overrides(cfg: DictConfig, items: list[str]) -> None:
    """This call's ``key=value`` overrides, typed by Hydra's own parser as on a fresh run (``1e-3`` is a float),
    into the saved run config ``cfg``; one line refuses a key that cannot change on resume or names no value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for item, override in zip(items, OverridesParser.create().parse_overrides(items), strict=True):
        key = override.key_or_group
        allowed = any(key == k or key.startswith(k + ".") for k in RESUMABLE)
        if override.is_sweep_override() or override.is_delete() or not allowed:
            exists = OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT
            why = "names no value of the saved run config" if not exists else "cannot change on resume"
            raise InputError(f"resume: {item!r} {why}; a resumed run can change only {', '.join(RESUMABLE)} "
                             "(one value each; the network, loss and data are the run's)")
        adds = override.is_add() or override.is_force_add()
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT and not adds:
            raise InputError(f"resume: {item!r} names no value of the saved run config; only existing values "
                             f"(e.g. trainer.max_steps=...) can change on resume (+{item} adds one)")
        OmegaConf.update(cfg, key, override.value(), merge=False, force_add=True)
    scheduler = OmegaConf.select(cfg, "model.scheduler._target_", default=None)
    if scheduler in _RESUMED_SCHEDULERS:
        cfg.model.scheduler._target_ = _RESUMED_SCHEDULERS[scheduler]


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


def original_overrides(run_dir: Path) -> list[str]:
    """The overrides the run in ``run_dir`` was started with: Hydra's record of that call (``.hydra/``; a resume
    records its own under ``.hydra/resume-<date>/``), else its ``results.json``; empty if neither is there."""
    recorded, results = run_dir / ".hydra" / "overrides.yaml", run_dir / "results.json"
    if recorded.is_file():
        return [str(o) for o in OmegaConf.load(recorded)]
    if results.is_file():
        return [str(o) for o in json.loads(results.read_text()).get("overrides") or []]
    return []


class RunHistory(Callback):
    """The run's story, kept in every checkpoint: the overrides and name it was started with and each resume
    (when, from which step, with which overrides), for ``results.json``. ``resume``: this call's overrides when
    it resumes the run (None for a fresh run)."""

    def __init__(self, overrides: list[str], name: str, resume: list[str] | None = None) -> None:
        self.overrides, self.name, self.resume = list(overrides), name, resume
        self.resumes: list[dict[str, Any]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.resume is not None:
            self.resumes.append({"when": datetime.now().astimezone().isoformat(timespec="seconds"),
                                 "from_step": trainer.global_step, "overrides": list(self.resume)})
            self.resume = None

    def state_dict(self) -> dict[str, Any]:
        return {"overrides": self.overrides, "name": self.name, "resumes": self.resumes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.overrides = list(state_dict.get("overrides", self.overrides))
        self.name = state_dict.get("name") or self.name
        self.resumes = list(state_dict.get("resumes", []))
