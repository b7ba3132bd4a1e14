from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
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


@pytest.mark.parametrize("name", ["slic", "felzenszwalb", "grid", "single"])
def test_partition_configs(name):
    from ratlit.partition import Partitioner

    partitioner = instantiate(OmegaConf.load(CONF / "partition" / f"{name}.yaml"))
    assert isinstance(partitioner, Partitioner) and partitioner.name == name


def test_sam_config_without_checkpoint_falls_back_when_asked(monkeypatch):
    monkeypatch.delenv("RATLIT_SAM_CHECKPOINT", raising=False)
    cfg = OmegaConf.load(CONF / "partition" / "sam.yaml")
    with pytest.raises(InstantiationException, match="No SAM checkpoint") as info:
        instantiate(cfg)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    cfg.fallback = {"_target_": "ratlit.partition.GridPartitioner"}
    with pytest.warns(UserWarning, match="USING GRID INSTEAD"):
        assert instantiate(cfg).spec == {"name": "grid", "cell_size": 16, "requested": "sam"}
