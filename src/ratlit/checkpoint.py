"""Loading a trained run back from its checkpoint (which carries the run's resolved config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ratlit.config import instantiate
from ratlit.files import load_weights


def resolve_path(path: str | Path, base: Path | None = None) -> Path:
    """``path`` made absolute against ``base`` (Hydra's original working directory) if relative."""
    p = Path(str(path)).expanduser()
    return p if p.is_absolute() or base is None else base / p


def load_checkpoint(path: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """``(run config, state_dict)`` from a ratlit checkpoint, read with ``weights_only=True``."""
    path = Path(path)
    checkpoint = load_weights(path, "checkpoint")
    if "state_dict" not in checkpoint or "ratlit_config" not in checkpoint:
        raise ValueError(f"{path} is not a ratlit checkpoint (no state_dict / ratlit_config)")
    return OmegaConf.create(checkpoint["ratlit_config"]), checkpoint["state_dict"]


def build_module(cfg: DictConfig, state_dict: dict[str, Any]) -> Any:
    """The run's RestorationModule with the checkpoint's weights, in eval mode."""
    module = instantiate(cfg.model)
    module.load_state_dict(state_dict)
    return module.eval()
