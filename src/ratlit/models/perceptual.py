"""Perceptual features for EDCNN's compound loss: a ResNet-50 trunk with torchvision's parameter names, so
ImageNet weights saved by torchvision (``resnet50-*.pth``) load into it (``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ratlit.utils.errors import InputError
from ratlit.utils.files import load_weights


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1), optional projection shortcut: ``[B, Cin, H, W] -> [B, 4P, H/s, W/s]``."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50Features(nn.Module):
    """ImageNet ResNet-50 without its head: ``[B, 3, H, W]`` -> the outputs of its four stages (frozen, eval)."""

    def __init__(self, checkpoint: str | Path | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for index, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
            layers = [Bottleneck(channels, planes, stride)]
            layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            channels = planes * 4
        if checkpoint is not None:
            self.load(Path(checkpoint))
        self.requires_grad_(False)
        self.eval()

    def load(self, path: Path) -> None:
        state = load_weights(path, "ResNet-50 checkpoint (torchvision's resnet50 ImageNet weights)")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            self.load_state_dict(state)
        except RuntimeError as err:
            raise InputError(f"{path} is not a ResNet-50 state dict: {str(err).splitlines()[0]}") from err

    def train(self, mode: bool = True) -> ResNet50Features:
        return super().train(False)  # batch-norm statistics stay ImageNet's

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            features.append(x)
        return features
