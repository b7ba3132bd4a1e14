"""An independent reference of the authors' public RAT (Model_RAT.py of Yaziwel/Region-Attention-Transformer-for-
Medical-Image-Restoration), written for the tests from the facts read there, not copied: the same parameter
names and shapes (so its ``state_dict()`` is one the authors' training writes), and a plain forward in their
layer order with their dense ``HW x HW`` mask (0 inside a region, lambda = -1000 across regions).

Facts used: 1x1 convolutions for R-MSA's qkv / output projection and both MLPs, linears for W-MSA's qkv and
projection; layer scales ``[1, C, 1, 1]``; channel layer norms with eps 1e-6; scores times ``heads ** -0.5``;
2x2 stride-2 down-sampling convs with bias; 1x1 conv (no bias) + pixel-shuffle up, skip by addition; each
group of layers ends in a 3x3 conv plus the group's input, and the whole middle adds its input again;
``out = lq + ending(...)``; labels downsampled with ``F.interpolate(..., scale_factor=1/4, mode="nearest")``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAMBDA = -1000.0


class ChannelNorm(nn.Module):
    """Layer norm over the channels of ``[B, C, H, W]``, written out (mean, biased variance, eps 1e-6)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).square().mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mean) / torch.sqrt(var + 1e-6) + self.bias[:, None, None]


def conv1x1(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias)


def gate(x: Tensor) -> Tensor:
    half = x.shape[1] // 2
    return x[:, :half] * x[:, half:]


class Naf(nn.Module):
    """NAFBlock with the authors' attribute names."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = ChannelNorm(c), ChannelNorm(c)
        self.conv1 = conv1x1(c, 2 * c)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv1x1(c, c))
        self.conv3 = conv1x1(c, c)
        self.conv4 = conv1x1(c, 2 * c)
        self.conv5 = conv1x1(c, c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = gate(self.conv2(self.conv1(self.norm1(x))))
        y = self.conv3(y * self.sca[1](y.mean((2, 3), keepdim=True)))
        x = x + self.beta * y
        return x + self.gamma * self.conv5(gate(self.conv4(self.norm2(x))))


def heads_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None) -> Tensor:
    """``[G, N, C]`` tokens, channels split as (head, d); scores times ``heads ** -0.5`` plus ``mask [G, N, N]``."""
    g, n, c = q.shape
    q, k, v = (t.reshape(g, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(heads)
    if mask is not None:
        scores = scores + mask[:, None]
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(g, n, c)


class RegionAttn(nn.Module):
    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = conv1x1(c, 3 * c)
        self.project_out = conv1x1(c, c)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = (t.flatten(2).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=1))
        out = heads_attention(q, k, v, self.heads, mask)
        return self.project_out(out.transpose(1, 2).reshape(b, c, h, w))


class WindowAttn(nn.Module):
    def __init__(self, c: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(c, 3 * c)
        self.proj_out = nn.Linear(c, c)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s = self.window
        tiles = x.reshape(b, c, h // s, s, w // s, s).permute(0, 2, 4, 3, 5, 1).reshape(-1, s * s, c)
        q, k, v = self.qkv(tiles).chunk(3, dim=-1)
        out = self.proj_out(heads_attention(q, k, v, self.heads, None))
        return out.reshape(b, h // s, w // s, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


class Mlp(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = conv1x1(c, hidden), conv1x1(hidden, c)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, c: int, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(c * mlp_ratio)
        self.norm_ra, self.ra = ChannelNorm(c), RegionAttn(c, heads)
        self.lambda_ra = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.norm_ra_mlp, self.mlp_ra = ChannelNorm(c), Mlp(c, hidden)
        self.norm_wa, self.wa = ChannelNorm(c), WindowAttn(c, heads, window)
        self.lambda_wa = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.norm_wa_mlp, self.mlp_wa = ChannelNorm(c), Mlp(c, hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.lambda_ra * self.ra(self.norm_ra(x), mask)
        x = x + self.mlp_ra(self.norm_ra_mlp(x))
        x = x + self.lambda_wa * self.wa(self.norm_wa(x))
        return x + self.mlp_wa(self.norm_wa_mlp(x))


class Group(nn.Module):
    def __init__(self, c: int, depth: int, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(c, heads, window, mlp_ratio) for _ in range(depth))
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = x
        for layer in self.layers:
            y = layer(y, mask)
        return self.conv(y) + x


def dense_mask(labels: Tensor) -> Tensor:
    """``[B, h, w]`` float ids -> ``[B, hw, hw]``: the sum over regions of ``r r^T`` (1 within a region), then
    ``(1 - M) * lambda``, region by region as the public code builds it."""
    flat = labels.flatten(1)
    same = torch.zeros(flat.shape[0], flat.shape[1], flat.shape[1], dtype=flat.dtype)
    for region in range(int(flat.max()) + 1):
        r = (flat == region).to(flat.dtype)
        same += r[:, :, None] * r[:, None, :]
    assert torch.all(same.sum(-1) >= 1), "labels must be integer ids >= 0"
    return (1 - same) * LAMBDA


class OfficialRAT(nn.Module):
    """The authors' network: ``forward(lq [B, C, H, W], labels [B, H, W] float ids >= 0)``, H, W multiples of 16."""

    def __init__(self, img_channel: int = 1, width: int = 64, middle_blk_num: int = 12,
                 enc_blk_nums: tuple[int, ...] = (2, 2), dec_blk_nums: tuple[int, ...] = (2, 2),
                 heads: int = 8, window: int = 4, mlp_ratio: float = 2.0, layers_per_group: int = 3) -> None:
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        c = width
        for count in enc_blk_nums:
            self.encoders.append(nn.Sequential(*(Naf(c) for _ in range(count))))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle_blks = nn.ModuleList(Group(c, layers_per_group, heads, window, mlp_ratio)
                                         for _ in range(middle_blk_num // layers_per_group))
        for count in dec_blk_nums:
            self.ups.append(nn.Sequential(conv1x1(c, 2 * c, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*(Naf(c) for _ in range(count))))
        self.factor = 2 ** len(enc_blk_nums)

    def forward(self, lq: Tensor, labels: Tensor) -> Tensor:
        small = F.interpolate(labels[:, None].float(), scale_factor=1 / self.factor, mode="nearest")[:, 0]
        mask = dense_mask(small.to(lq.dtype))
        x = self.intro(lq)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            skips.append(encoder(x))
            x = down(skips[-1])
        start = x
        for group in self.middle_blks:
            x = group(x, mask)
        x = x + start
        for up, decoder, skip in zip(self.ups, self.decoders, skips[::-1], strict=True):
            x = decoder(up(x) + skip)
        return lq + self.ending(x)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn at random (layer scales included, which start at zero), so no path is silent."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if name.rsplit(".", 1)[-1] in ("lambda_ra", "lambda_wa", "beta", "gamma"):
                p.copy_(0.5 * noise)
            elif p.ndim > 1:  # weights: unit gain, so the signal neither fades nor blows up over the layers
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model
