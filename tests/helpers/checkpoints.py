"""Checkpoints of a tiny RAT built in-process from the composed config, whose output is known in closed form."""

from collections.abc import Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ratlit.utils.config import CONF_DIR, instantiate


def make_checkpoint(path: Path, task: str, bias: float | None = 0.0, seed: int = 0, partition: str = "grid",
                    train_image_shape: Sequence[int] | None = None) -> Path:
    """A checkpoint of a tiny RAT for ``task``; ``bias`` not None: the network is ``lq + bias`` exactly.
    ``train_image_shape``: recorded as training records it (None: a run that records none)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"task={task}", "experiment=smoke", f"partition={partition}",
                                          f"run_dir={path.parent}", f"paths.cache_dir={path.parent / 'cache'}"])
    torch.manual_seed(seed)
    module = instantiate(cfg.model)
    with torch.no_grad():
        if bias is None:  # a network that is not flip-equivariant: orientation matters
            torch.nn.init.normal_(module.net.ending.weight, std=0.2)
        else:
            module.net.ending.weight.zero_()
            module.net.ending.bias.fill_(bias)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["partition_used"] = instantiate(cfg.partition).spec
    if train_image_shape is not None:
        resolved["train_image_shape"] = list(train_image_shape)
    torch.save({"state_dict": module.state_dict(), "ratlit_config": OmegaConf.to_yaml(resolved)}, path)
    return path
