from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ratlit.losses import LOSSES
from ratlit.models import RAT

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_model_config_is_the_paper_default():
    cfg = OmegaConf.load(CONF / "model" / "rat.yaml")
    model = instantiate(cfg)
    assert isinstance(model, RAT)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in RAT().parameters())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_configs(name):
    loss = instantiate(OmegaConf.load(CONF / "loss" / f"{name}.yaml"))
    assert isinstance(loss, LOSSES[name])
    x = torch.rand(1, 1, 4, 4)
    assert loss(x, x, torch.zeros(1, 4, 4, dtype=torch.long)).item() <= 1e-3 + 1e-9


@pytest.mark.parametrize("attention", ["rmsa", "wmsa", "msa"])
def test_attention_configs(attention):
    cfg = OmegaConf.merge(
        {"model": OmegaConf.load(CONF / "model" / "rat.yaml")}, OmegaConf.load(CONF / "attention" / f"{attention}.yaml")
    )
    assert cfg.model.attention == attention
