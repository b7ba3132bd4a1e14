"""TinyViT (Wu et al., ECCV 2022) as LiteMedSAM's image encoder: conv stage, then windowed attention stages.

Written from the paper's architecture and the parameter layout of the LiteMedSAM weights (module names
match the state dict: ``patch_embed.seq``, ``layers.{i}.blocks`` / ``downsample``, ``neck``), without timm,
so it imports next to a torch that torchvision does not fit. LiteMedSAM's variant embeds patches with 1x1
convolutions (no stride): a 256x256 input runs its conv stage at full resolution and leaves a 64x64
embedding, SAM's prompt grid.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ratlit.partition._torchvision_compat import import_segment_anything
from ratlit.utils.errors import InputError


class ConvBN(nn.Sequential):
    """Conv2d without bias + BatchNorm2d. ``[B, C_in, H, W] -> [B, C_out, H', W']``."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class PatchEmbed(nn.Module):
    """Two 1x1 ConvBN with GELU between. ``[B, C, H, W] -> [B, D, H, W]``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, embed_dim // 2), nn.GELU(), ConvBN(embed_dim // 2, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual (1x1 expand, 3x3 depthwise, 1x1 project). ``[B, D, H, W] -> [B, D, H, W]``."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1, 3x3 depthwise (stride ``stride``), 1x1. ``[B, D, H, W] -> [B, H' * W', D_out]`` (tokens)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head self-attention within one ``window x window`` window, with a learnt bias per head and
    per (|dy|, |dx|) offset. ``[B, N, D] -> [B, N, D]`` with ``N = window ** 2``."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        index = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)) for a in points for b in points]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(index).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Pre-norm two-layer MLP. ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, 3x3 depthwise ConvBN, MLP. ``[B, H * W, D] -> [B, H * W, D]``."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution, self.window = resolution, window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = w = self.resolution
        s = self.window
        grid = x.view(b, h, w, d)
        pad_h, pad_w = (-h) % s, (-w) % s
        if pad_h or pad_w:
            grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
        ph, pw = h + pad_h, w + pad_w
        windows = grid.view(b, ph // s, s, pw // s, s, d).transpose(2, 3).reshape(-1, s * s, d)
        attended = self.attn(windows).view(b, ph // s, pw // s, s, s, d).transpose(2, 3).reshape(b, ph, pw, d)
        x = x + attended[:, :h, :w].reshape(b, n, d)
        x = self.local_conv(x.transpose(1, 2).reshape(b, d, h, w)).view(b, d, n).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    """Blocks at one resolution, then an optional PatchMerging. Conv stage: ``[B, D, H, W]`` in; attention
    stages: ``[B, H * W, D]`` in; out: tokens ``[B, H' * W', D_out]``."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None, resolution: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.resolution = resolution

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is None:
            return x
        if x.ndim == 3:  # tokens -> feature map for the convolutions
            x = x.transpose(1, 2).reshape(x.shape[0], -1, self.resolution, self.resolution)
        return self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck. ``[B, 3, S, S] -> [B, out_chans, S / 4, S / 4]``, S = img_size.

    Stage i runs at ``S / 2**i`` (i < 3) and the last stage at the third one's resolution (its merging has
    stride 1), as in MobileSAM / LiteMedSAM.
    """

    def __init__(
        self,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        if len({len(embed_dims), len(depths), len(num_heads), len(window_sizes)}) != 1 or len(depths) != 4:
            raise ValueError("embed_dims, depths, num_heads and window_sizes need 4 entries each (one per stage)")
        if img_size % 4:
            raise InputError(f"img_size must be a multiple of 4, got {img_size}")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        resolutions = [img_size, img_size // 2, img_size // 4, img_size // 4]
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths, strict=True)):
            if i == 0:
                blocks = [MBConv(dim, mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(dim, resolutions[i], num_heads[i], window_sizes[i], mlp_ratio) for _ in range(depth)
                ]
            downsample = None
            if i < 3:
                stride = resolutions[i] // resolutions[i + 1]
                downsample = PatchMerging(dim, embed_dims[i + 1], stride)
            self.layers.append(Stage(blocks, downsample, resolutions[i]))
        # segment_anything's own channel norm, as in LiteMedSAM (partitions are made apart from ratlit.models).
        LayerNorm2d = import_segment_anything().modeling.common.LayerNorm2d  # noqa: N806
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"TinyViT expects {self.img_size}x{self.img_size} inputs, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        side = self.img_size // 4
        return self.neck(x.transpose(1, 2).reshape(x.shape[0], -1, side, side))
