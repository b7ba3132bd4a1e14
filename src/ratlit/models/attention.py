"""Self-attention of RAT: region attention (R-MSA), window attention (W-MSA), global MSA.

``region_attention`` is exact masked attention (Eq. 3-4 with lambda -> -inf) computed without
ever forming an N x N mask or score matrix:

* tokens are sorted by region, so every region is one contiguous run;
* regions no larger than ``block_size`` are packed whole into blocks of ``block_size`` tokens and
  all blocks run as one batched SDPA call with a small block-diagonal mask (a block never holds
  part of a region, so no keys outside the block are needed);
* each larger region runs as one unmasked SDPA call over exactly its own tokens.

Work is ``sum(min(n_i, block) * ...)`` instead of ``N^2``, memory is linear in N, and the fused
SDPA kernels (flash / memory-efficient on CPU and CUDA) do the arithmetic. On CUDA,
FlexAttention with a block mask over the region-sorted tokens is used when available.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ratlit.validation import check_labels

ATTENTION_MODES = ("rmsa", "wmsa", "msa")
REGION_IMPLS = ("auto", "sparse", "flex", "dense")
SCALE_CHOICES = ("heads", "head_dim")
FLEX_BLOCK = 128  # FlexAttention's tile size


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, labels: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            raise ValueError(f"{name} must be a tensor of shape [B, heads, N, d], got {getattr(t, 'shape', t)}")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v shapes do not match: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_labels("labels", labels, (q.shape[0], q.shape[2]))


def dense_region_attention(
    q: Tensor, k: Tensor, v: Tensor, labels: Tensor, scale: float | None = None, mask_value: float = float("-inf")
) -> Tensor:
    """Reference R-MSA, Eq. 3-4 as written: ``softmax(q k^T * scale + M) v`` with a dense N x N mask.

    ``M`` is 0 between tokens of one region and ``mask_value`` (the paper's lambda) otherwise.
    O(N^2) memory: for tests and for reproducing a finite lambda exactly.
    """
    _check_qkv(q, k, v, labels)
    labels = labels.to(q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    same = labels[:, None, :, None] == labels[:, None, None, :]
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    scores = scores + torch.where(same, 0.0, mask_value).to(scores.dtype)
    return torch.matmul(scores.softmax(dim=-1), v)


def region_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    labels: Tensor,
    scale: float | None = None,
    *,
    block_size: int = 128,
    impl: str = "auto",
) -> Tensor:
    """Exact attention restricted to tokens of the same region; ``q, k, v [B, heads, N, d]``, ``labels [B, N]``.

    Returns ``softmax(q k^T * scale + M) v`` with ``M = 0`` within a region and ``-inf`` across regions,
    ``scale=None`` meaning ``d ** -0.5``. Label ids are arbitrary integers, compared per batch item.
    ``impl``: ``"sparse"`` (packed block-sparse SDPA), ``"flex"`` (FlexAttention block mask),
    ``"dense"`` (reference), ``"auto"`` (flex on CUDA when it works, otherwise sparse).
    """
    if impl not in REGION_IMPLS:
        raise ValueError(f"impl must be one of {REGION_IMPLS}, got {impl!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    _check_qkv(q, k, v, labels)
    labels = labels.to(q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if impl == "dense":
        return dense_region_attention(q, k, v, labels, scale)
    if impl == "flex" or (impl == "auto" and q.is_cuda and _flex_usable(q.device.type)):
        try:
            return _flex_region_attention(q, k, v, labels, scale)
        except Exception as err:  # compilation can fail on exotic set-ups; the sparse path is always exact
            if impl == "flex":
                raise
            _disable_flex(q.device.type, err)
    return _packed_region_attention(q, k, v, labels, scale, block_size)


def _region_runs(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort tokens by (item, label); returns flat token order, run starts and run lengths."""
    batch, n = labels.shape
    sorted_labels, order = labels.sort(dim=1, stable=True)
    is_start = torch.ones_like(sorted_labels, dtype=torch.bool)
    is_start[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    flat_order = (order + torch.arange(batch, device=labels.device)[:, None] * n).flatten()
    starts = is_start.flatten().nonzero().squeeze(1)
    lengths = torch.diff(starts, append=starts.new_tensor([batch * n]))
    return flat_order, starts, lengths


def _pack_regions(lengths: list[int], block_size: int) -> tuple[list[int], list[int], list[int], int]:
    """Next-fit packing of regions no longer than a block; returns (region, block, offset) lists and block count."""
    small, block_of, offset_of = [], [], []
    block, fill = -1, block_size
    for region, length in enumerate(lengths):
        if length > block_size:
            continue
        if fill + length > block_size:
            block, fill = block + 1, 0
        small.append(region)
        block_of.append(block)
        offset_of.append(fill)
        fill += length
    return small, block_of, offset_of, block + 1


def _packed_region_attention(q: Tensor, k: Tensor, v: Tensor, labels: Tensor, scale: float, block_size: int) -> Tensor:
    batch, heads, n, dim = q.shape
    device = q.device
    flat_order, starts, lengths = _region_runs(labels)
    lengths_list = lengths.tolist()
    small, block_of, offset_of, n_blocks = _pack_regions(lengths_list, block_size)

    # Token-major views [B*N (+1 zero row for block padding), heads, d].
    def tokens(t: Tensor) -> Tensor:
        return t.transpose(1, 2).reshape(batch * n, heads, t.shape[-1])

    qt, kt, vt = tokens(q), tokens(k), tokens(v)
    out_parts: list[Tensor] = []
    token_parts: list[Tensor] = []

    if small:
        region_of_pos = torch.repeat_interleave(torch.arange(len(lengths_list), device=device), lengths)
        small_t = torch.tensor(small, device=device)
        is_small = torch.zeros(len(lengths_list), dtype=torch.bool, device=device)
        is_small[small_t] = True
        slot_base = torch.zeros(len(lengths_list), dtype=torch.long, device=device)
        slot_base[small_t] = torch.tensor(block_of, device=device) * block_size + torch.tensor(offset_of, device=device)
        pos = is_small[region_of_pos].nonzero().squeeze(1)
        region = region_of_pos[pos]
        slots = slot_base[region] + (pos - starts[region])
        n_slots = n_blocks * block_size
        # Padding slots read a zero token and get unique negative ids: they only attend to themselves.
        slot_token = torch.full((n_slots,), batch * n, dtype=torch.long, device=device)
        slot_token[slots] = flat_order[pos]
        slot_region = -1 - torch.arange(n_slots, device=device)
        slot_region[slots] = region

        def blocks(t: Tensor) -> Tensor:
            padded = torch.cat([t, t.new_zeros(1, heads, t.shape[-1])])
            return padded[slot_token].view(n_blocks, block_size, heads, t.shape[-1]).transpose(1, 2)

        ids = slot_region.view(n_blocks, 1, block_size)
        mask = (ids.unsqueeze(-1) == ids.unsqueeze(-2))  # [blocks, 1, T, T], block-diagonal
        out_blocks = F.scaled_dot_product_attention(blocks(qt), blocks(kt), blocks(vt), attn_mask=mask, scale=scale)
        out_parts.append(out_blocks.transpose(1, 2).reshape(n_slots, heads, -1)[slots])
        token_parts.append(flat_order[pos])

    # Regions larger than a block: one unmasked SDPA call per group of equally long regions (a whole-image
    # region per item, as with partition=single, runs as a single batched call).
    starts_list = starts.tolist()
    by_length: dict[int, list[int]] = {}
    for region, length in enumerate(lengths_list):
        if length > block_size:
            by_length.setdefault(length, []).append(starts_list[region])
    for length, run_starts in by_length.items():
        offsets = torch.arange(length, device=device)
        idx = flat_order[torch.tensor(run_starts, device=device)[:, None] + offsets]  # [g, n_i]

        def run(t: Tensor) -> Tensor:
            return t[idx].transpose(1, 2)  # [g, heads, n_i, d]

        out = F.scaled_dot_product_attention(run(qt), run(kt), run(vt), scale=scale)
        out_parts.append(out.transpose(1, 2).reshape(-1, heads, out.shape[-1]))
        token_parts.append(idx.reshape(-1))

    token_order = torch.cat(token_parts)
    inverse = torch.empty_like(token_order)
    inverse[token_order] = torch.arange(token_order.numel(), device=device)
    out = torch.cat(out_parts)[inverse]  # [B*N, heads, d_v]
    return out.view(batch, n, heads, -1).transpose(1, 2)


_FLEX_BROKEN: set[str] = set()


def _flex_usable(device_type: str) -> bool:
    if device_type in _FLEX_BROKEN:
        return False
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _disable_flex(device_type: str, err: Exception) -> None:
    _FLEX_BROKEN.add(device_type)
    warnings.warn(f"FlexAttention failed on {device_type} ({err!r}); using the packed SDPA region attention instead.")


@lru_cache(maxsize=None)
def _compiled_flex(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    # Without compile, flex_attention materialises the full score matrix; compile only where it pays off.
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def region_block_mask(sorted_labels: Tensor, block: int = FLEX_BLOCK):
    """FlexAttention ``BlockMask`` for region-sorted tokens, built in O(N) from the region runs.

    Sorted, every region is a contiguous run, so a block of queries needs exactly the key blocks from the
    start of its first region to the end of its last one; ``mask_mod`` settles the partial blocks.
    """
    from torch.nn.attention.flex_attention import BlockMask

    batch, n = sorted_labels.shape
    positions = torch.arange(n, device=sorted_labels.device).expand(batch, n)
    is_start = torch.ones_like(sorted_labels, dtype=torch.bool)
    is_start[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    run_start = torch.cummax(torch.where(is_start, positions, 0), dim=1).values
    is_end = torch.ones_like(is_start)
    is_end[:, :-1] = is_start[:, 1:]
    run_end = torch.flip(torch.cummin(torch.flip(torch.where(is_end, positions, n), [1]), dim=1).values, [1])  # last index
    n_blocks = -(-n // block)
    first_q = torch.arange(n_blocks, device=positions.device) * block
    last_q = torch.clamp(first_q + block - 1, max=n - 1)
    first_kv = run_start[:, first_q] // block  # [B, nb]
    last_kv = run_end[:, last_q] // block
    counts = (last_kv - first_kv + 1).to(torch.int32)
    indices = (first_kv[..., None] + torch.arange(n_blocks, device=positions.device)).clamp(max=n_blocks - 1)

    def mask_mod(b, h, q_idx, kv_idx):
        return sorted_labels[b, q_idx] == sorted_labels[b, kv_idx]

    return BlockMask.from_kv_blocks(counts[:, None], indices[:, None].to(torch.int32), BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(n, n))


def _flex_region_attention(q: Tensor, k: Tensor, v: Tensor, labels: Tensor, scale: float) -> Tensor:
    heads = q.shape[1]
    # Sorting by region makes the block mask as sparse as the partition allows.
    sorted_labels, order = labels.sort(dim=1, stable=True)
    gather = order[:, None, :, None]
    block_mask = region_block_mask(sorted_labels)
    qs, ks, vs = (t.gather(2, gather.expand(-1, heads, -1, t.shape[-1])) for t in (q, k, v))
    out_sorted = _compiled_flex(q.device.type)(qs, ks, vs, block_mask=block_mask, scale=scale)
    return torch.empty_like(out_sorted).scatter(2, gather.expand(-1, heads, -1, out_sorted.shape[-1]), out_sorted)


def attention_scale(dim: int, num_heads: int, scale_by: str) -> float:
    """Softmax temperature: the paper's 1/sqrt(heads) (Eq. 4, public code) or the standard 1/sqrt(head_dim)."""
    if scale_by == "heads":
        return 1.0 / math.sqrt(num_heads)
    if scale_by == "head_dim":
        return 1.0 / math.sqrt(dim // num_heads)
    raise ValueError(f"scale_by must be one of {SCALE_CHOICES}, got {scale_by!r}")


class MultiHeadSelfAttention(nn.Module):
    """Self-attention on a channels-last map ``[B, H, W, C] -> [B, H, W, C]``: R-MSA, W-MSA or MSA."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mode: str = "rmsa",
        window_size: int = 4,
        scale_by: str = "heads",
        qkv_bias: bool = True,
        region_impl: str = "auto",
        mask_value: float = -1000.0,
    ) -> None:
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        if region_impl not in REGION_IMPLS:
            raise ValueError(f"region_impl must be one of {REGION_IMPLS}, got {region_impl!r}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.mode, self.window_size = num_heads, mode, window_size
        self.region_impl, self.mask_value = region_impl, mask_value
        self.scale = attention_scale(dim, num_heads, scale_by)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        batch, height, width, channels = x.shape
        qkv = self.qkv(x)
        if self.mode == "wmsa":
            qkv = window_partition(qkv, self.window_size)
        qkv = qkv.reshape(qkv.shape[0], -1, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B', heads, N', d]
        if self.mode == "rmsa":
            if labels is None:
                raise ValueError("R-MSA needs a region label map (labels), got None")
            flat = labels.reshape(batch, height * width)
            if self.region_impl == "dense":
                out = dense_region_attention(q, k, v, flat, self.scale, self.mask_value)
            else:
                out = region_attention(q, k, v, flat, self.scale, impl=self.region_impl)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(out.shape[0], -1, channels)
        if self.mode == "wmsa":
            out = window_reverse(out, self.window_size, batch, height, width)
        return self.proj(out.reshape(batch, height, width, channels))


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
