"""Networks with a global residual start as the identity (their last residual layer is zero-initialised)."""

import pytest
import torch

from ratlit.models import RAT
from ratlit.models.dcnn import ResidualDCNN
from ratlit.models.edcnn import EDCNN
from ratlit.models.edsr import EDSR
from ratlit.models.rcan import RCAN
from ratlit.models.redcnn import REDCNN
from ratlit.models.swinir import SwinIR
from ratlit.models.unet import UNet

RESIDUAL = {
    "redcnn": lambda c, **kw: REDCNN(c, features=8, **kw),
    "edcnn": lambda c, **kw: EDCNN(c, edge_channels=8, features=8, blocks=3, **kw),
    "edsr": lambda c, **kw: EDSR(c, features=8, blocks=2, **kw),
    "rcan": lambda c, **kw: RCAN(c, features=8, groups=2, blocks=2, reduction=4, **kw),
    "swinir": lambda c, **kw: SwinIR(c, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, **kw),
    "dcnn": lambda c, **kw: ResidualDCNN(c, features=8, depth=4, **kw),
    "unet": lambda c, **kw: UNet(c, features=4, levels=2, **kw),
    "nafnet": lambda c, **kw: RAT(c, width=8, num_groups=0, **kw),
}


def _regions(batch: int, height: int, width: int) -> torch.Tensor:
    rows = torch.arange(height)[:, None] // 7
    cols = torch.arange(width)[None, :] // 5
    return (rows * 100 + cols).expand(batch, height, width).contiguous()


@pytest.mark.parametrize("attention", ["rmsa", "wmsa", "msa"])
@pytest.mark.parametrize("size", [(16, 16), (27, 41), (64, 48)])
def test_untrained_rat_returns_its_input(attention, size):
    torch.manual_seed(0)
    net = RAT(1, width=8, num_groups=1, layers_per_group=1, num_heads=2, attention=attention, layer_scale_init=0.1)
    lq = torch.rand(2, 1, *size)
    out = net(lq, _regions(2, *size))
    assert torch.equal(out, lq)
    off = RAT(1, width=8, num_groups=1, layers_per_group=1, num_heads=2, attention=attention, zero_init_last=False)
    assert not torch.equal(off(lq, _regions(2, *size)), lq)  # the switch really switches


@pytest.mark.parametrize("name", sorted(RESIDUAL))
@pytest.mark.parametrize("channels, size", [(1, (32, 32)), (3, (27, 41))])
def test_untrained_residual_baseline_returns_its_input(name, channels, size):
    torch.manual_seed(0)
    lq = torch.rand(2, channels, *size)  # normalised intensities are >= 0 (RED-CNN and EDCNN end with a ReLU)
    for mode in ("train", "eval"):
        net = RESIDUAL[name](channels)
        getattr(net, mode)()
        assert torch.equal(net(lq, None), lq), mode
    assert not torch.equal(RESIDUAL[name](channels, zero_init_last=False)(lq, None), lq)


def test_identity_start_still_learns():
    """The zeroed layer gets gradients at step one, so the network leaves the identity."""
    net = RESIDUAL["edsr"](1)
    lq = torch.rand(1, 1, 16, 16)
    loss = (net(lq) - 0.5).abs().mean()
    loss.backward()
    assert net.tail.weight.grad.abs().sum() > 0
