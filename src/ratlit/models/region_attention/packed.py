"""The packed path of R-MSA: small regions packed whole into blocks run as one batched attention call with a
block-diagonal mask; each group of equally long large regions runs as one unmasked call.

Work is ``sum(min(n_i, block) * ...)`` instead of ``N^2``, memory is linear in N, and the fused SDPA kernels (or
the matmul form where faster) do the arithmetic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ratlit.models.region_attention.layout import RegionLayout, build_region_layout, gather_rows
from ratlit.models.region_attention.sdpa import attention


def packed_tokens(
    q: Tensor, k: Tensor, v: Tensor, layout: RegionLayout, scale: float, qkv: Tensor | None = None
) -> Tensor:
    """Packed R-MSA on tokens in layout order: ``q, k [B*N, heads, d], v [B*N, heads, d_v] -> [B*N, heads, d_v]``.

    ``qkv [B*N, 3, heads, d]``, when q, k, v are its slices, lets the blocks be gathered once instead of three times.
    """
    if not layout.packed:
        # A sorted layout (built for flex): its rows are one sequence labelled by run id; pack that.
        inner = build_region_layout(layout.run_id[None], layout.block_size)
        out = packed_tokens(inner.to_layout(q), inner.to_layout(k), inner.to_layout(v), inner, scale)
        return inner.from_layout(out)
    heads, value_dim = q.shape[1], v.shape[-1]
    # The rows split into the small regions' part and one part per group of large regions. split, not
    # slicing: its backward is one cat, where each slice's backward would zero-fill a full-size gradient
    # and autograd would add them up.
    sizes = [layout.small_rows] + [count * length for count, length in layout.groups]
    if qkv is not None:
        parts = qkv.split(sizes)
        qkv_parts = [part.unbind(1) for part in parts]
    else:
        qkv_parts = list(zip(q.split(sizes), k.split(sizes), v.split(sizes), strict=True))
    outs: list[Tensor] = []
    if layout.block_index is not None:
        t = layout.block_size
        n_blocks = layout.block_index.numel() // t
        # Filler slots (past a block's own regions) attend only to themselves and are dropped, so their
        # gradient is exactly zero and each small row's gradient comes from its own slot alone.
        def blocks(x: Tensor) -> Tensor:
            return gather_rows(x, layout.block_index, layout.slot_of_row)

        qb, kb, vb = blocks(parts[0]).unbind(1) if qkv is not None else (blocks(x) for x in qkv_parts[0])
        qb, kb, vb = (x.view(n_blocks, t, heads, x.shape[-1]).transpose(1, 2) for x in (qb, kb, vb))
        out = attention(qb, kb, vb, scale, layout.block_mask)
        out = out.transpose(1, 2).reshape(n_blocks * t, heads, value_dim)
        outs.append(gather_rows(out, layout.slot_of_row, layout.row_of_slot, layout.filler_slots))
    for (qg, kg, vg), (count, length) in zip(qkv_parts[1:], layout.groups, strict=True):
        # A group of equally long regions is a contiguous part: one batched, unmasked attention call, no gather.
        qg, kg, vg = (x.view(count, length, heads, x.shape[-1]).transpose(1, 2) for x in (qg, kg, vg))
        out = attention(qg, kg, vg, scale)
        outs.append(out.transpose(1, 2).reshape(count * length, heads, value_dim))
    return outs[0] if len(outs) == 1 else torch.cat(outs)
