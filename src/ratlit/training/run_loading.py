"""Loading a trained run back from its checkpoint (which carries the run's resolved config)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ratlit.training.checkpoint_saving import check_whole_checkpoint
from ratlit.utils.config import instantiate
from ratlit.utils.errors import InputError
from ratlit.utils.files import load_weights
from ratlit.utils.trusted_targets import check_targets, trusted_entries

log = logging.getLogger(__name__)

# Classes that run configs name by `_target_` and that moved when the package was regrouped (0.1 layout) or their
# modules renamed: configs saved by earlier runs (checkpoints, config.yaml) still load.
MOVED_TARGETS = {
    "ratlit.module.RestorationModule": "ratlit.training.module.RestorationModule",
    "ratlit.runs.ValidateAtEnd": "ratlit.training.callbacks.ValidateAtEnd",
    "ratlit.runs.AppendingCSVLogger": "ratlit.training.loggers.AppendingCSVLogger",
    "ratlit.callbacks.WandbSummaries": "ratlit.training.loggers.WandbSummaries",
    # last.ckpt at every validation and interrupt; same arguments, same checkpoint state key
    "lightning.pytorch.callbacks.ModelCheckpoint": "ratlit.training.checkpoint_saving.RunCheckpoint",
    **{f"ratlit.callbacks.{name}": f"ratlit.training.callbacks.{name}"
       for name in ("RegionPanels", "PerImageScores", "BestValidation", "TrainingSpeed", "StepProgressBar")},
    "ratlit.training.checkpointing.RunCheckpoint": "ratlit.training.checkpoint_saving.RunCheckpoint",
    "ratlit.training.guardrails.CpuTimeEstimate": "ratlit.training.cpu_estimate.CpuTimeEstimate",
}


def upgrade_run_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the ``_target_``s of moved classes (:data:`MOVED_TARGETS`) renamed."""
    def renamed(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else renamed(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [renamed(v) for v in value]
        return value

    return OmegaConf.create(renamed(OmegaConf.to_container(cfg)))


# What every run config holds (conf/train.yaml composed with a task): a config without them is not a run's.
RUN_CONFIG_KEYS = ("task_name", "model._target_", "model.net._target_", "data._target_")


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or for a run folder (or its ``checkpoints/``) the run's best checkpoint
    (``best-*.ckpt``; the newest if there are several), else its ``last.ckpt``; says which in one log line."""
    path = Path(path)
    if not path.is_dir():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name))
    if best:
        log.info("ckpt=%s: using the run's best checkpoint %s", path, best[-1])
        return best[-1]
    if (folder / "last.ckpt").is_file():
        log.warning("ckpt=%s: no best-*.ckpt in %s; using last.ckpt (the latest weights, not the best validated)",
                    path, folder)
        return folder / "last.ckpt"
    raise InputError(f"ckpt={path} is a folder without checkpoints (checkpoints/best-*.ckpt or last.ckpt); "
                     "give a run folder or a .ckpt file")


def load_checkpoint(path: str | Path, trusted: Iterable[str] | None = None) -> tuple[DictConfig, dict[str, Any]]:
    """``(run config, state_dict)`` from a ratlit checkpoint (a file, or a run folder: :func:`checkpoint_file`),
    read with ``weights_only=True``; ValueError naming the file when it is not one, InputError when its config
    names a callable that is not trusted (:mod:`ratlit.utils.trusted_targets`; ``trusted``: the command's own
    entries, default those of ``$RATLIT_TRUSTED_TARGETS``)."""
    path = checkpoint_file(path)
    check_whole_checkpoint(path)  # a save cut short: one line naming the file, not torch's zip error
    checkpoint = load_weights(path, "checkpoint")
    if "state_dict" not in checkpoint or "ratlit_config" not in checkpoint:
        raise InputError(f"{path} is not a ratlit checkpoint (no state_dict / ratlit_config)")
    try:
        cfg = OmegaConf.create(checkpoint["ratlit_config"])
    except Exception as err:
        raise InputError(f"{path} is not a ratlit checkpoint: its ratlit_config is not a config ({err})") from err
    missing = [key for key in RUN_CONFIG_KEYS if not _has(cfg, key)]
    if missing:
        raise InputError(f"{path} is not a ratlit checkpoint: its ratlit_config is not a run config "
                         f"(no {', '.join(missing)})")
    cfg = upgrade_run_config(cfg)  # first: a moved ratlit class is named where it is now
    check_targets(cfg, str(path), trusted_entries() if trusted is None else trusted)
    return cfg, checkpoint["state_dict"]


def build_module(cfg: DictConfig, state_dict: dict[str, Any]) -> Any:
    """The run's RestorationModule with the checkpoint's weights, in eval mode."""
    module = instantiate(cfg.model)
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:  # weights of another network than the one its config describes
        first = str(err).splitlines()[0]
        raise InputError(f"the checkpoint's weights do not fit the network its config describes: {first}") from err
    return module.eval()


def _has(cfg: Any, key: str) -> bool:
    try:
        return isinstance(cfg, DictConfig) and OmegaConf.select(cfg, key, default=None) is not None
    except Exception:  # an interpolation that does not resolve: not a (resolved) run config
        return False
