"""Loading a trained run back from its checkpoint (which carries the run's resolved config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ratlit.training.checkpointing import check_whole_checkpoint
from ratlit.utils.config import instantiate
from ratlit.utils.files import load_weights

# Classes that run configs name by `_target_` and that moved when the package was regrouped (0.1 layout):
# configs saved by earlier runs (checkpoints, config.yaml) still load.
MOVED_TARGETS = {
    "ratlit.module.RestorationModule": "ratlit.training.module.RestorationModule",
    "ratlit.runs.ValidateAtEnd": "ratlit.training.callbacks.ValidateAtEnd",
    "ratlit.runs.AppendingCSVLogger": "ratlit.training.loggers.AppendingCSVLogger",
    "ratlit.callbacks.WandbSummaries": "ratlit.training.loggers.WandbSummaries",
    # last.ckpt at every validation and interrupt (issue 23); same arguments, same checkpoint state key
    "lightning.pytorch.callbacks.ModelCheckpoint": "ratlit.training.checkpointing.RunCheckpoint",
    **{f"ratlit.callbacks.{name}": f"ratlit.training.callbacks.{name}"
       for name in ("RegionPanels", "PerImageScores", "BestValidation", "TrainingSpeed", "StepProgressBar")},
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


def load_checkpoint(path: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """``(run config, state_dict)`` from a ratlit checkpoint, read with ``weights_only=True``."""
    path = Path(path)
    check_whole_checkpoint(path)  # a save cut short: one line naming the file, not torch's zip error
    checkpoint = load_weights(path, "checkpoint")
    if "state_dict" not in checkpoint or "ratlit_config" not in checkpoint:
        raise ValueError(f"{path} is not a ratlit checkpoint (no state_dict / ratlit_config)")
    return upgrade_run_config(OmegaConf.create(checkpoint["ratlit_config"])), checkpoint["state_dict"]


def build_module(cfg: DictConfig, state_dict: dict[str, Any]) -> Any:
    """The run's RestorationModule with the checkpoint's weights, in eval mode."""
    module = instantiate(cfg.model)
    module.load_state_dict(state_dict)
    return module.eval()
