"""SwinIR, classical-restoration variant (Liang et al., "SwinIR: Image restoration using Swin Transformer",
ICCVW 2021): a 3x3 conv, residual Swin Transformer blocks (RSTB: Swin layers alternating regular and
shifted windows, with relative position bias, closed by a 3x3 conv and a residual), a conv after the body,
a long skip, and a reconstruction conv added to the input. Same-size output (the denoising/JPEG form: the
suite's LQ images are already at the HQ size). The paper's model is 180 channels x 6 RSTBs x 6 layers;
the default here is small: 60 channels, 4 RSTBs x 4 layers, window 8."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ratlit.models.attention import window_partition, window_reverse
from ratlit.models.blocks import zero_init_
from ratlit.utils.checks import check_image
from ratlit.utils.errors import InputError


class WindowAttention(nn.Module):
    """Multi-head attention in ``ws x ws`` windows with a relative position bias: ``[nW*B, ws*ws, C]`` -> same."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise InputError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        steps = torch.arange(window_size)
        coords = torch.stack(torch.meshgrid(steps, steps, indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window_size - 1
        self.register_buffer("bias_index", relative[..., 0] * (2 * window_size - 1) + relative[..., 1],
                             persistent=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        windows, tokens, channels = x.shape
        q, k, v = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)[None]  # [1, heads, N, N]
        if mask is not None:  # [nW, N, N] of 0 / -inf, repeated over the batch
            bias = (bias + mask[:, None]).repeat(windows // mask.shape[0], 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, channels))


class SwinLayer(nn.Module):
    """LN - (shifted) window attention - residual, LN - MLP - residual, on ``[B, H, W, C]``."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.window_size, self.shift = window_size, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def shift_mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """0 / -inf ``[nW, N, N]``: after the cyclic shift, tokens of different image areas never attend."""
        ws, s = self.window_size, self.shift
        areas = torch.zeros(1, height, width, 1, device=device)
        label = 0
        for rows in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for cols in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                areas[:, rows, cols] = label
                label += 1
        ids = window_partition(areas, ws)[..., 0]
        return torch.where(ids[:, :, None] == ids[:, None, :], 0.0, float("-inf"))

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        y = self.norm1(x)
        mask = None
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
            mask = self.shift_mask(height, width, x.device)
        y = window_reverse(self.attn(window_partition(y, self.window_size), mask), self.window_size, batch, height,
                           width)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class RSTB(nn.Module):
    """Residual Swin Transformer block: ``depth`` Swin layers, a 3x3 conv, a residual; ``[B, C, H, W]``."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SwinLayer(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio)
            for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = x.permute(0, 2, 3, 1)
        for layer in self.layers:
            y = layer(y)
        return x + self.conv(y.permute(0, 3, 1, 2))


class SwinIR(nn.Module):
    """``[B, C, H, W] -> [B, C, H, W]`` for any H, W (reflect-padded to a multiple of the window, cropped)."""

    def __init__(self, in_channels: int = 3, embed_dim: int = 60, depths: tuple[int, ...] | list[int] = (4, 4, 4, 4),
                 num_heads: tuple[int, ...] | list[int] = (6, 6, 6, 6), window_size: int = 8, mlp_ratio: float = 2.0,
                 zero_init_last: bool = True) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise InputError(f"depths and num_heads need one entry per RSTB, got {depths} and {num_heads}")
        if window_size < 2:
            raise InputError(f"window_size must be >= 2, got {window_size}")
        self.in_channels, self.window_size = in_channels, window_size
        self.conv_first = nn.Conv2d(in_channels, embed_dim, 3, padding=1)
        self.blocks = nn.ModuleList(RSTB(embed_dim, d, h, window_size, mlp_ratio)
                                    for d, h in zip(depths, num_heads, strict=True))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_last = nn.Conv2d(embed_dim, in_channels, 3, padding=1)
        if zero_init_last:  # an untrained network returns its input: training starts from the input's score
            zero_init_(self.conv_last)

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        height, width = lq.shape[-2:]
        pad_h, pad_w = -height % self.window_size, -width % self.window_size
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x_in = F.pad(lq, (0, pad_w, 0, pad_h), mode=mode)
        shallow = self.conv_first(x_in)
        x = shallow
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.conv_after_body(x) + shallow
        return (x_in + self.conv_last(x))[..., :height, :width]
