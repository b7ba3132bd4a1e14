"""The authors' weights as a ratlit checkpoint (``python -m ratlit.convert``).

Reads the state dict their Model_RAT.py training wrote, builds the RAT that computes their function
(:func:`ratlit.models.official.from_official`) and writes a checkpoint that ``ratlit.evaluate`` and
``ratlit.predict`` take: the module's weights and the train config of ``task`` composed with the network's options.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from ratlit.models.official import load_official, official_rat
from ratlit.training.run_folder import absolute_data_paths
from ratlit.utils.config import CONF_DIR, instantiate
from ratlit.utils.errors import InputError
from ratlit.utils.files import atomic_write
from ratlit.utils.trusted_targets import CONFIG_KEY, check_targets, trusted_entries

log = logging.getLogger("ratlit.convert")
# The network the authors trained: RAT with R-MSA at full size (the options are then set from their weights).
BASE_OVERRIDES = ("model=rat", "attention=rmsa", "size=full")


def compose_run_config(task: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """The train config of ``task`` with ``overrides`` (Hydra's compose API, inside or outside a Hydra app)."""
    from hydra import compose, initialize_config_dir

    every = [f"task={task}", *BASE_OVERRIDES, *overrides, f"run_dir={run_dir}"]
    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=every)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=every)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(official: str | Path, out: str | Path, task: str, overrides: list[str] | tuple[str, ...] = (),
            num_heads: int = 8, window_size: int = 4, region_impl: str = "auto") -> Path:
    """Write the ratlit checkpoint ``out`` (``state_dict`` + ``ratlit_config``) of the authors' weights ``official``
    for ``task``; ``overrides``: more train-config overrides (partition, data) recorded in its run config."""
    official, out = Path(official).expanduser().resolve(), Path(out).expanduser().resolve()
    net, options = official_rat(load_official(official), str(official), num_heads, window_size, region_impl)
    options = {k: v for k, v in options.items() if k != "in_channels"}  # the task's, checked below
    cfg = compose_run_config(task, list(overrides), out.parent)
    if net.in_channels != cfg.in_channels:
        raise InputError(f"{official}: the weights take {net.in_channels} channel(s); task {task} has "
                         f"{cfg.in_channels}")
    options["region_impl"] = region_impl
    check_targets(cfg, "the run config", trusted_entries(cfg.get(CONFIG_KEY)))  # what evaluate will check
    with open_dict(cfg):
        cfg.model.net.update(options)
        cfg.partition_used = instantiate(cfg.partition).spec
        cfg.converted_from = {"file": str(official), "sha256": sha256(official)}
    absolute_data_paths(cfg.data, Path.cwd())
    module = instantiate(cfg.model)
    try:  # strict: the config's network is the converted one
        module.net.load_state_dict(net.state_dict())
    except RuntimeError as err:
        raise InputError(f"the overrides {list(overrides)} change the authors' network: {err}") from None
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = {"state_dict": module.state_dict(), "ratlit_config": OmegaConf.to_yaml(resolved)}
    atomic_write(out, lambda f: torch.save(checkpoint, f))
    log.info("wrote %s: the authors' RAT (%s), task %s, partition %s", out, official.name, task,
             resolved["partition_used"].get("name"))
    return out
