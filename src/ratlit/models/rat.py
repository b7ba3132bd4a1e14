"""The Region Attention Transformer (Yang et al., MICCAI 2024): a NAFNet U-Net with RAT blocks at 1/4 scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ratlit.models.attention import (
    ATTENTION_CHOICES,
    MultiHeadSelfAttention,
    window_partition,
    window_reverse,
)
from ratlit.models.blocks import Downsample, Upsample, nafblocks, zero_init_
from ratlit.models.region_attention import (
    RegionLayout,
    region_impl_choice,
    region_layout,
)
from ratlit.utils.checks import check_image, check_labels
from ratlit.utils.errors import InputError

LABEL_DOWNSAMPLING = ("nearest", "majority")


class Mlp(nn.Module):
    """Two-layer GELU MLP on channels-last tokens ``[..., C] -> [..., C]``."""

    def __init__(self, dim: int, ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RATLayer(nn.Module):
    """Pre-norm (R-MSA + MLP) then pre-norm (W-MSA + MLP) on ``[B, H, W, C]``: region attention, then the
    window layer that connects neighbouring regions. ``attention`` swaps the first sub-layer (Table 4)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attention: str = "rmsa",
        window_size: int = 4,
        mlp_ratio: float = 2.0,
        scale_by: str = "heads",
        layer_scale_init: float = 0.0,
        region_impl: str = "auto",
        mask_value: float = -1000.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        common = dict(num_heads=num_heads, window_size=window_size, scale_by=scale_by)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn1 = MultiHeadSelfAttention(
            dim, attention=attention, region_impl=region_impl, mask_value=mask_value, **common
        )
        self.scale1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp1 = Mlp(dim, mlp_ratio)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn2 = MultiHeadSelfAttention(dim, attention="wmsa", **common)
        self.scale2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.norm4 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp2 = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, labels: Tensor | RegionLayout | None) -> Tensor:
        """``x [B, H, W, C]``; ``labels``: the token labels ``[B, H, W]`` or their layout (R-MSA only)."""
        batch, height, width, channels = x.shape
        attn1 = self.attn1
        if attn1.attention == "rmsa":
            layout = attn1.region_layout(x, labels)
            # Tokens move into region order once: norm, attention, projection and MLP all run there.
            y = layout.to_layout(x.reshape(-1, channels))
            y = y + attn1.region_tokens(self.norm1(y), layout, self.scale1)
            y = y + self.mlp1(self.norm2(y))
            x = layout.from_layout(y).view(x.shape)
        else:
            x = x + attn1(self.norm1(x), None, self.scale1)
            x = x + self.mlp1(self.norm2(x))
        # Likewise the W-MSA sub-layer and its MLP run on windows, moved once.
        ws = self.attn2.window_size
        y = window_partition(x, ws)
        y = y + self.attn2.unmasked_tokens(self.norm3(y), self.scale2)
        y = y + self.mlp2(self.norm4(y))
        return window_reverse(y, ws, batch, height, width)


class RATGroup(nn.Module):
    """``depth`` RAT layers, a 3x3 conv and a residual: ``[B, C, H, W], labels [B, H, W] -> [B, C, H, W]``.

    ``labels`` may be a :class:`RegionLayout` of the ``[B, H*W]`` token labels, shared by all layers.
    """

    def __init__(self, dim: int, depth: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(RATLayer(dim, **layer_kwargs) for _ in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor, labels: Tensor | RegionLayout | None) -> Tensor:
        y = x.permute(0, 2, 3, 1)
        for layer in self.layers:
            y = layer(y, labels)
        return x + self.conv(y.permute(0, 3, 1, 2))


class RAT(nn.Module):
    """Region Attention Transformer: ``model(lq [B, C, H, W], regions [B, H, W] int) -> [B, C, H, W]``.

    ``num_groups=0`` is RAT's U-Net without attention (NAFNet-style, the ``nafnet`` baseline); ``regions`` may
    be None whenever no R-MSA layer needs it. Any H, W: the input is zero-padded to a multiple of
    ``2**levels * window_size`` (padded pixels form a region of their own) and the output cropped back.
    ``regions`` holds arbitrary integer ids.

    Paper defaults: width 64, 2 + 2 NAFBlocks per encoder level and 2 + 2 per decoder level, 12 RAT layers
    (4 groups of 3, as in the public code), 8 heads, window 4, MLP ratio 2, attention scaled by 1/sqrt(heads).
    ``mask_value`` is the paper's lambda; it is used literally by ``region_impl="dense"``. The packed and flex
    kernels compute its -inf limit, identical in float32 to lambda = -1000 unless scores in one row differ by
    more than about 900. ``zero_init_last`` zero-initialises the last conv, so an untrained network returns
    ``lq`` unchanged and training starts from the input's own score.
    ``norm_eps``: the RAT layers' layer-norm epsilon (the public code's is 1e-6); ``middle_residual`` adds the
    RAT groups' input to their output (the public code's residual around the whole middle).
    ``activation_checkpointing`` recomputes each RAT group in backward instead of storing its activations
    (same gradients, less memory, about one more forward of the groups in time).
    """

    # Compiled training compiles these in place, one compiled graph per class shared by all instances
    # (ratlit.training.compiling.compile_repeated_blocks).
    _repeated_blocks = ("NAFBlock", "RATLayer")

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        enc_blocks: tuple[int, ...] | list[int] = (2, 2),
        dec_blocks: tuple[int, ...] | list[int] = (2, 2),
        num_groups: int = 4,
        layers_per_group: int = 3,
        num_heads: int = 8,
        window_size: int = 4,
        mlp_ratio: float = 2.0,
        attention: str = "rmsa",
        scale_by: str = "heads",
        downsample: str = "pixel_unshuffle",
        label_downsampling: str = "nearest",
        region_impl: str = "auto",
        mask_value: float = -1000.0,
        layer_scale_init: float = 0.0,
        zero_init_last: bool = True,
        activation_checkpointing: bool = False,
        norm_eps: float = 1e-5,
        middle_residual: bool = False,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_CHOICES:
            raise InputError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
        region_impl = region_impl_choice(region_impl)
        if label_downsampling not in LABEL_DOWNSAMPLING:
            raise InputError(f"label_downsampling must be one of {LABEL_DOWNSAMPLING}, got {label_downsampling!r}")
        if len(enc_blocks) != len(dec_blocks):
            raise InputError(f"enc_blocks and dec_blocks need one entry per level, got {enc_blocks} and {dec_blocks}")
        if in_channels < 1 or width < 1:
            raise InputError(f"in_channels and width must be positive, got {in_channels} and {width}")
        self.in_channels = in_channels
        self.attention = attention
        self.label_downsampling = label_downsampling
        self.region_impl = region_impl
        self.activation_checkpointing = activation_checkpointing
        self.middle_residual = middle_residual
        self.scale_factor = 2 ** len(enc_blocks)
        self.pad_multiple = self.scale_factor * window_size

        self.intro = nn.Conv2d(in_channels, width, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        channels = width
        for count in enc_blocks:
            self.encoders.append(nafblocks(channels, count, layer_scale_init))
            self.downs.append(Downsample(channels, downsample))
            channels *= 2
        self.middle = nn.ModuleList(
            RATGroup(
                channels,
                layers_per_group,
                num_heads=num_heads,
                attention=attention,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                scale_by=scale_by,
                layer_scale_init=layer_scale_init,
                region_impl=region_impl,
                mask_value=mask_value,
                norm_eps=norm_eps,
            )
            for _ in range(num_groups)
        )
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for count in reversed(dec_blocks):
            self.ups.append(Upsample(channels))
            channels //= 2
            self.decoders.append(nafblocks(channels, count, layer_scale_init))
        self.ending = nn.Conv2d(width, in_channels, 3, padding=1)
        if zero_init_last:  # start as the identity: lq + 0 (a random residual starts under the input: docs/training.md)
            zero_init_(self.ending)
        # Channels-last convolutions (oneDNN's preferred layout) and free [B, H, W, C] views for the RAT
        # groups and layer norms: about 10% of a CPU training step.
        self.to(memory_format=torch.channels_last)

    @property
    def needs_regions(self) -> bool:
        return self.attention == "rmsa" and len(self.middle) > 0

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        check_image("lq", lq, self.in_channels)
        height, width = lq.shape[-2:]
        pad_h = -height % self.pad_multiple
        pad_w = -width % self.pad_multiple
        x_in = F.pad(lq, (0, pad_w, 0, pad_h))
        layout = None
        if regions is not None or self.needs_regions:
            check_labels("regions", regions, (lq.shape[0], *lq.shape[2:]))
        if self.needs_regions:  # built once here, shared by every R-MSA layer
            layout = self.region_layout(regions.to(lq.device), pad_h, pad_w)

        x = self.intro(x_in.contiguous(memory_format=torch.channels_last))
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        middle_in = x
        for group in self.middle:
            if self.activation_checkpointing and torch.is_grad_enabled():
                # Recomputed in backward: only each group's input is kept (what fits: docs/performance.md).
                x = checkpoint(group, x, layout, use_reentrant=False)
            else:
                x = group(x, layout)
        if self.middle_residual:
            x = x + middle_in
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(up(x) + skip)
        return (x_in + self.ending(x))[..., :height, :width]

    @torch.compiler.disable  # data-dependent (region count, lengths): eager, so nothing recompiles per partition
    def region_layout(self, regions: Tensor, pad_h: int = 0, pad_w: int = 0) -> RegionLayout:
        """The :class:`RegionLayout` of the token labels (:meth:`token_labels`) for this network's ``region_impl``:
        one sort (and packing or block mask) for the whole forward, shared by every R-MSA layer."""
        labels = self.token_labels(regions, pad_h, pad_w)
        return region_layout(labels.reshape(labels.shape[0], -1), self.region_impl)

    def token_labels(self, regions: Tensor, pad_h: int = 0, pad_w: int = 0) -> Tensor:
        """Label map ``[B, H, W]`` -> ids at the RAT resolution ``[B, H', W']``, padding as a region of its own.

        Ids keep their values (int64); no host synchronisation (the training step never waits here).
        """
        regions = regions.long()
        batch, height, width = regions.shape
        factor = self.scale_factor
        if pad_h or pad_w:
            # An id no region has: one past the largest, or one below the smallest where that would overflow.
            top = regions.amax()
            free = torch.where(top < torch.iinfo(torch.int64).max, top + 1, regions.amin() - 1)
            padded = free.expand(batch, height + pad_h, width + pad_w).clone()
            padded[:, :height, :width] = regions
            regions = padded
        if self.label_downsampling == "nearest":
            # Nearest interpolation by an integer factor samples the top-left pixel of each cell (Eq. 2).
            return regions[:, ::factor, ::factor]
        h, w = regions.shape[1:]
        cells = regions.view(batch, h // factor, factor, w // factor, factor).permute(0, 1, 3, 2, 4)
        return cells.reshape(batch, h // factor, w // factor, factor * factor).mode(dim=-1).values
