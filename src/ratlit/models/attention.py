"""Self-attention modules of RAT: region attention (R-MSA), window attention (W-MSA), global MSA.

The R-MSA kernels (layout, packed, FlexAttention, dense reference, dispatch) live in
:mod:`ratlit.models.region_attention`; ``region_attention`` is re-exported here (the documented entry point).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ratlit.models.blocks import scaled_output
from ratlit.models.region_attention import (
    RegionLayout,
    attention,
    region_attention,
    region_attention_tokens,
    region_impl_choice,
    region_layout,
)
from ratlit.utils.errors import InputError

__all__ = [
    "ATTENTION_CHOICES",
    "MultiHeadSelfAttention",
    "RegionLayout",
    "attention_scale",
    "region_attention",
    "window_partition",
    "window_reverse",
]

ATTENTION_CHOICES = ("rmsa", "wmsa", "msa")
SCALE_CHOICES = ("heads", "head_dim")


def attention_scale(dim: int, num_heads: int, scale_by: str) -> float:
    """Softmax temperature: the paper's 1/sqrt(heads) (Eq. 4, public code) or the standard 1/sqrt(head_dim)."""
    if scale_by == "heads":
        return 1.0 / math.sqrt(num_heads)
    if scale_by == "head_dim":
        return 1.0 / math.sqrt(dim // num_heads)
    raise InputError(f"scale_by must be one of {SCALE_CHOICES}, got {scale_by!r}")


class MultiHeadSelfAttention(nn.Module):
    """Self-attention on a channels-last map ``[B, H, W, C] -> [B, H, W, C]``: R-MSA, W-MSA or MSA (``attention``).

    ``region_impl``: the R-MSA kernel (see :data:`ratlit.models.region_attention.REGION_IMPLS`; ``sparse`` is
    accepted for ``packed``). ``mask_value`` is the paper's lambda, used literally by ``region_impl="dense"``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attention: str = "rmsa",
        window_size: int = 4,
        scale_by: str = "heads",
        qkv_bias: bool = True,
        region_impl: str = "auto",
        mask_value: float = -1000.0,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_CHOICES:
            raise InputError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
        if dim % num_heads:
            raise InputError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.attention, self.window_size = num_heads, attention, window_size
        self.region_impl, self.mask_value = region_impl_choice(region_impl), mask_value
        self.scale = attention_scale(dim, num_heads, scale_by)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, labels: Tensor | RegionLayout | None = None, out_scale: Tensor | None = None
    ) -> Tensor:
        """``labels [B, H, W]`` (or their layout) for R-MSA; ``out_scale [C]``: a factor per output channel,
        folded into the output projection (a layer scale)."""
        batch, height, width, channels = x.shape
        if self.attention == "wmsa":
            windows = self.unmasked_tokens(window_partition(x, self.window_size), out_scale)
            return window_reverse(windows, self.window_size, batch, height, width)
        if self.attention == "msa":
            return self.unmasked_tokens(x.reshape(batch, height * width, channels), out_scale).view(x.shape)
        layout = self.region_layout(x, labels)
        out = self.region_tokens(layout.to_layout(x.reshape(-1, channels)), layout, out_scale)
        return layout.from_layout(out).view(x.shape)

    def region_layout(self, x: Tensor, labels: Tensor | RegionLayout | None) -> RegionLayout:
        """The :class:`RegionLayout` of ``labels`` ``[B, H, W]`` for ``x [B, H, W, C]`` (``labels`` may already be
        one), of the kind this layer's ``region_impl`` runs on; checked against x's token count."""
        if labels is None:
            raise ValueError("R-MSA needs a region label map (labels), got None")
        batch, height, width, _ = x.shape
        if isinstance(labels, RegionLayout):
            layout = labels
        else:
            layout = region_layout(labels.reshape(batch, height * width).to(x.device), self.region_impl)
        if layout.order.numel() != batch * height * width:
            raise ValueError(f"the region layout covers {layout.order.numel()} tokens, x has {batch * height * width}")
        return layout

    def region_tokens(self, x: Tensor, layout: RegionLayout, out_scale: Tensor | None = None) -> Tensor:
        """R-MSA on tokens already in layout order: ``[B*N, C] -> [B*N, C]`` (qkv and proj are per token)."""
        tokens, channels = x.shape
        qkv = self.qkv(x).view(tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.unbind(1)
        out = region_attention_tokens(
            q, k, v, layout, self.scale, self.region_impl, qkv=qkv, mask_value=self.mask_value
        )
        return self.project(out.reshape(tokens, channels), out_scale)

    def unmasked_tokens(self, x: Tensor, out_scale: Tensor | None = None) -> Tensor:
        """Unmasked attention among the tokens of each row of ``[B', T, C] -> [B', T, C]``: each row a window
        (W-MSA) or a whole image (MSA)."""
        groups, tokens, channels = x.shape
        qkv = self.qkv(x).view(groups, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, self.scale)
        return self.project(out.transpose(1, 2).reshape(groups, tokens, channels), out_scale)

    def project(self, x: Tensor, out_scale: Tensor | None) -> Tensor:
        """The output projection, times ``out_scale`` per channel where given (folded into its weights)."""
        return self.proj(x) if out_scale is None else scaled_output(self.proj, x, out_scale)


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """``[B, H, W, C] -> [B * nW, ws * ws, C]`` non-overlapping windows (H, W multiples of ws)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: Tensor, window_size: int, batch: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, ws * ws, C] -> [B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.view(batch, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, c)
