import subprocess
import sys

import pytest
import torch

from ratlit.losses import CompoundLoss, L1Loss
from ratlit.models import RAT
from ratlit.models.cnn import SRCNN, ChenCNN
from ratlit.models.dcnn import ResidualDCNN
from ratlit.models.edcnn import EDCNN
from ratlit.models.edsr import EDSR
from ratlit.models.perceptual import ResNet50Features
from ratlit.models.rcan import RCAN
from ratlit.models.redcnn import REDCNN
from ratlit.models.swinir import SwinIR, SwinLayer
from ratlit.models.unet import UNet

SMALL = {
    "cnn": lambda c: ChenCNN(c, features=(8, 8)),
    "redcnn": lambda c: REDCNN(c, features=8),
    "edcnn": lambda c: EDCNN(c, edge_channels=8, features=8, blocks=3),
    "srcnn": lambda c: SRCNN(c, features=(8, 8)),
    "edsr": lambda c: EDSR(c, features=8, blocks=2),
    "rcan": lambda c: RCAN(c, features=8, groups=2, blocks=2, reduction=4),
    "swinir": lambda c: SwinIR(c, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4),
    "dcnn": lambda c: ResidualDCNN(c, features=8, depth=4),
    "unet": lambda c: UNet(c, features=4, levels=2),
    "nafnet": lambda c: RAT(c, width=8, num_groups=0),
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(32, 32), (27, 41)])
def test_shapes(name, channels, size):
    net = SMALL[name](channels)
    lq = torch.rand(2, channels, *size)
    out = net(lq, None)
    assert out.shape == lq.shape and torch.isfinite(out).all()
    assert net(lq, torch.zeros(2, *size, dtype=torch.long)).shape == lq.shape  # regions are ignored


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    net = SMALL[name](1)
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    clean = ((rows**2 + cols**2) < 0.5).float()[None, None].repeat(2, 1, 1, 1) * 0.6 + 0.2
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = L1Loss()(net(noisy), clean)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < losses[0], losses


def test_bad_input_and_arguments():
    with pytest.raises(ValueError, match="lq must have 3 channel"):
        SMALL["edsr"](3)(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 21x21"):
        SMALL["redcnn"](1)(torch.rand(1, 1, 16, 40))
    with pytest.raises(ValueError, match="NaN"):
        SMALL["unet"](1)(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="depths and num_heads"):
        SwinIR(depths=(2,), num_heads=(2, 2))
    with pytest.raises(ValueError, match="regions"):
        RAT(1, width=8, num_groups=1, layers_per_group=1, num_heads=2)(torch.rand(1, 1, 16, 16), None)


def test_swin_shift_mask_separates_wrapped_areas():
    layer = SwinLayer(8, 2, window_size=4, shift=2)
    mask = layer.shift_mask(8, 8, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one image area
    last = mask[3]
    assert (last == float("-inf")).any() and (torch.diagonal(last) == 0).all()


def test_compound_loss(tmp_path):
    pred, target = torch.rand(1, 1, 32, 32, requires_grad=True), torch.rand(1, 1, 32, 32)
    assert CompoundLoss(perceptual_weight=0)(pred, target) == torch.nn.functional.mse_loss(pred, target)
    with pytest.raises(ValueError, match="needs ImageNet ResNet-50 weights"):
        CompoundLoss()
    path = tmp_path / "resnet50.pth"
    torch.manual_seed(0)
    state = ResNet50Features().state_dict()
    state["fc.weight"] = torch.zeros(1000, 2048)  # torchvision files carry the classifier too
    torch.save(state, path)
    loss = CompoundLoss(perceptual_weight=0.5, perceptual_checkpoint=str(path))
    value = loss(pred, target)
    assert value > torch.nn.functional.mse_loss(pred, target)
    value.backward()
    assert pred.grad is not None and all(not p.requires_grad for p in loss.features.parameters())
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a ResNet-50 state dict"):
        CompoundLoss(perceptual_checkpoint=str(tmp_path / "bad.pth"))


@pytest.mark.slow
def test_summary_prints_the_parameter_count(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ratlit.summary", "model=edsr", "task=pathology"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = sum(p.numel() for p in EDSR(3).parameters())
    assert f"{expected:,} parameters" in result.stdout
