"""Which R-MSA kernel runs (``region_impl``: auto, packed, flex, varlen, dense), the one way a layout for it is
built, and the public entry points :func:`region_attention` (``[B, heads, N, d]``) and
:func:`region_attention_tokens` (tokens already in layout order, as the RAT layers call it)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ratlit.models.region_attention.flex import disable_flex, flex_tokens, flex_usable
from ratlit.models.region_attention.layout import RegionLayout, build_region_layout
from ratlit.models.region_attention.packed import packed_tokens
from ratlit.models.region_attention.reference import check_qkv, dense_region_attention
from ratlit.models.region_attention.varlen import varlen_available, varlen_tokens, varlen_unsupported
from ratlit.utils.errors import InputError

log = logging.getLogger(__name__)

REGION_IMPLS = ("auto", "packed", "flex", "varlen", "dense")
# `sparse` was the packed path's first name (configs and runs made before it was renamed): still accepted.
REGION_IMPL_ALIASES = {"sparse": "packed"}

# What region_impl=auto runs, by (device type, dtype); dtype None: any other dtype of that device. Each entry is the
# fastest kernel measured for R-MSA forward + backward as RAT runs it (benchmarks/bench_gpu.py), varlen aside: its
# host reads keep the training step out of a CUDA graph. The figures: docs/performance.md, "GPU: which kernel
# region_impl=auto runs". Once a GPU run measures another kernel faster, its entry is the whole change.
AUTO_IMPL: dict[tuple[str, torch.dtype | None], str] = {
    ("cuda", torch.float32): "flex",  # varlen has no fp32 kernel
    ("cuda", torch.bfloat16): "flex",
    ("cuda", torch.float16): "flex",  # not measured: the kernels of bfloat16
    ("cuda", None): "flex",  # float64: not measured; FlexAttention as for every dtype before this table
    # FlexAttention has no CPU backward and varlen_attn no CPU kernel: packed is the CPU's only fast path.
    ("cpu", None): "packed",
}
_AUTO_LOGGED: set[tuple[str, torch.dtype]] = set()


def region_impl_choice(impl: str, name: str = "region_impl") -> str:
    """``impl`` checked against :data:`REGION_IMPLS`, aliases (``sparse``) replaced by their name (``packed``)."""
    impl = REGION_IMPL_ALIASES.get(impl, impl)
    if impl not in REGION_IMPLS:
        raise InputError(f"{name} must be one of {REGION_IMPLS}, got {impl!r}")
    return impl


def auto_region_impl(device: torch.device, dtype: torch.dtype | None = None) -> str:
    """What ``impl="auto"`` runs on ``device`` for ``dtype``: the :data:`AUTO_IMPL` entry (packed for a device it
    does not list), with flex replaced by packed where FlexAttention is missing or failed in this process and
    varlen by flex where torch has no varlen_attn. With a dtype (the kernel's choice), logged once per process
    for each device type and dtype."""
    device_type = torch.device(device).type
    chosen = AUTO_IMPL.get((device_type, dtype), AUTO_IMPL.get((device_type, None), "packed"))
    if chosen == "varlen" and not varlen_available():
        chosen = "flex"
    if chosen == "flex" and not flex_usable(device_type):
        chosen = "packed"
    if dtype is not None and (device_type, dtype) not in _AUTO_LOGGED:
        _AUTO_LOGGED.add((device_type, dtype))
        log.info("region_impl=auto on %s %s runs %s (ratlit.models.region_attention.dispatch.AUTO_IMPL)",
                 device_type, str(dtype).removeprefix("torch."), chosen)
    return chosen


def wants_packed_layout(impl: str, device: torch.device) -> bool:
    """Whether ``impl`` on ``device`` runs the packed path (else a sorted layout: flex, varlen and dense need no
    packing). The layout is built before the dtype is known: every :data:`AUTO_IMPL` entry of one device agrees
    on its kind (tested)."""
    impl = region_impl_choice(impl)
    return (auto_region_impl(device) if impl == "auto" else impl) == "packed"


def region_layout(labels: Tensor, impl: str = "auto", block_size: int | None = None) -> RegionLayout:
    """The :class:`RegionLayout` of token labels ``[B, N]`` of the kind ``impl`` runs on (on the labels' device)."""
    return build_region_layout(labels, block_size, packed=wants_packed_layout(impl, labels.device))


def region_attention_tokens(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: RegionLayout,
    scale: float,
    impl: str = "auto",
    qkv: Tensor | None = None,
    mask_value: float = float("-inf"),
) -> Tensor:
    """Region attention on tokens in layout order: ``q, k [B*N, heads, d], v [B*N, heads, d_v] -> [B*N, heads, d_v]``.

    ``qkv [B*N, 3, heads, d]``, when q, k, v are its slices, lets the packed path gather once instead of three
    times. ``mask_value`` (the paper's lambda) is used by ``impl="dense"`` only; the others compute its -inf limit.
    """
    impl = region_impl_choice(impl, "impl")
    if impl != "dense":
        return _fast_tokens(q, k, v, layout, scale, impl, qkv)
    # The reference in image order (per item, with the layout's own label map), moved back into layout order.
    batch, n = layout.labels.shape
    heads, value_dim = q.shape[1], v.shape[-1]

    def image(t: Tensor) -> Tensor:  # [B*N, heads, d] in layout order -> [B, heads, N, d]
        return layout.from_layout(t).view(batch, n, heads, t.shape[-1]).transpose(1, 2)

    out = dense_region_attention(image(q), image(k), image(v), layout.labels, scale, mask_value)
    return layout.to_layout(out.transpose(1, 2).reshape(batch * n, heads, value_dim))


@torch.compiler.disable  # data-dependent shapes: run eagerly inside a compiled network, never recompile per partition
def _fast_tokens(
    q: Tensor, k: Tensor, v: Tensor, layout: RegionLayout, scale: float, impl: str, qkv: Tensor | None
) -> Tensor:
    chosen = auto_region_impl(q.device, q.dtype) if impl == "auto" else impl
    if chosen == "varlen":
        if impl == "varlen" or varlen_unsupported(q, v) is None:  # asked for: an unsupported case is an error
            return varlen_tokens(q, k, v, layout, scale)
        chosen = "flex" if flex_usable(q.device.type) else "packed"  # e.g. a head dim flash attention lacks
    if chosen == "flex":
        try:
            return flex_tokens(q, k, v, layout, scale)
        except Exception as err:  # compilation can fail on exotic set-ups; the packed path is always exact
            if impl == "flex":
                raise
            disable_flex(q.device.type, err)
    return packed_tokens(q, k, v, layout, scale, qkv)


def region_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    labels: Tensor | RegionLayout,
    scale: float | None = None,
    *,
    block_size: int | None = None,
    impl: str = "auto",
) -> Tensor:
    """Exact attention restricted to tokens of the same region; ``q, k, v [B, heads, N, d]``, ``labels [B, N]``.

    Returns ``softmax(q k^T * scale + M) v`` with ``M = 0`` within a region and ``-inf`` across regions,
    ``scale=None`` meaning ``d ** -0.5``. Label ids are arbitrary integers, compared per batch item.
    ``labels`` may also be a prebuilt :class:`RegionLayout` (its ``block_size`` then applies); ``block_size``:
    the packed path's block length (None: :func:`packed_block_size` of the device).
    ``impl``: ``"packed"`` (packed block-sparse SDPA; ``"sparse"`` is an alias), ``"flex"`` (FlexAttention block
    mask), ``"varlen"`` (flash attention, one sequence per region: CUDA, float16 / bfloat16 only, else an error),
    ``"dense"`` (reference), ``"auto"`` (by device and dtype: :data:`AUTO_IMPL`, :func:`auto_region_impl`).
    """
    impl = region_impl_choice(impl, "impl")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    layout = labels if isinstance(labels, RegionLayout) else None
    check_qkv(q, k, v, layout.labels if layout is not None else labels)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if impl == "dense" or q.shape[0] * q.shape[2] == 0:  # (no tokens: the reference gives the empty result)
        return dense_region_attention(q, k, v, layout.labels if layout is not None else labels, scale)
    if layout is None:
        layout = region_layout(labels.to(q.device), impl, block_size)
    batch, heads, n, _ = q.shape

    def tokens(t: Tensor) -> Tensor:  # [B, heads, N, d] -> [B*N, heads, d] in layout order
        return layout.to_layout(t.transpose(1, 2).reshape(batch * n, heads, t.shape[-1]))

    out = region_attention_tokens(tokens(q), tokens(k), tokens(v), layout, scale, impl)
    return layout.from_layout(out).view(batch, n, heads, v.shape[-1]).transpose(1, 2)
