"""Where every token goes for region attention: :class:`RegionLayout`, its builder, and the row gather they use.

The sort, the packing and the masks depend only on the label map: a layout is built once per network forward
and shared by every R-MSA layer, and a layer moves its input tokens ``x [B*N, C]`` into layout order once
(norm, qkv, projection and MLP are per token) instead of gathering q, k and v.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ratlit.models.region_attention import flex, varlen
from ratlit.utils.checks import check_labels


class _GatherRows(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward is a gather too: row ``i`` of ``x`` receives the gradient of
    output row ``back[i]``, and the output rows ``zero_rows`` (if given) pass no gradient on.

    Exact where every other output row reading row ``i`` has a zero gradient; index_select's own backward
    (a scatter-add into zeros) costs several times more on the CPU.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, back: Tensor, zero_rows: Tensor | None) -> Tensor:
        ctx.save_for_backward(back, zero_rows)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        back, zero_rows = ctx.saved_tensors
        out = grad.index_select(0, back)
        if zero_rows is not None and zero_rows.numel():
            out.index_fill_(0, zero_rows, 0)
        return out, None, None, None


def gather_rows(x: Tensor, index: Tensor, back: Tensor, zero_rows: Tensor | None = None) -> Tensor:
    """Rows ``index`` of ``x`` (see :class:`_GatherRows`: ``back`` routes the gradient, ``zero_rows`` get none)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _GatherRows.apply(x, index, back, zero_rows)
    return x.index_select(0, index)


@dataclass(eq=False)
class RegionLayout:
    """Where every token goes for region attention, computed once per label map and shared by all R-MSA layers.

    Tokens of the batch are flattened (``B*N``) and reordered so that every region is one contiguous run.
    Packed (for the packed SDPA path): first the regions of at most ``block_size`` tokens (packed next-fit
    into blocks of ``block_size`` rows, each block a contiguous range of rows), then the larger regions
    grouped by length, so a group of ``g`` regions of ``n`` tokens is a contiguous ``[g * n]`` slice that
    needs no gather. Not packed (for FlexAttention and varlen): sorted by item and region only, built without a
    host synchronisation (the packing needs the region lengths on the host); the block fields are then None.
    Either way ``run_id`` is non-decreasing: the FlexAttention block mask and the varlen sequences are built
    from it on first use, once per layout.
    """

    labels: Tensor  # [B, N] the label map it was built from (the dense reference uses it)
    order: Tensor  # [B*N] layout row -> flat token index
    inverse: Tensor  # [B*N] flat token index -> layout row
    run_id: Tensor  # [B*N] region of each layout row, non-decreasing (ids unique across items)
    block_size: int
    small_rows: int  # rows [0, small_rows) hold the packed small regions
    block_index: Tensor | None  # [n_blocks * block_size] small-region row read by each block slot
    block_mask: Tensor | None  # [n_blocks, 1, block_size, block_size] same-region mask of the slots
    slot_of_row: Tensor | None  # [small_rows] block slot of each small-region row
    row_of_slot: Tensor | None  # [n_blocks * block_size] small row of each slot (any row for filler slots)
    filler_slots: Tensor | None  # slots past their block's regions (attend only to themselves, dropped)
    groups: tuple[tuple[int, int], ...]  # (regions, tokens per region) of the large regions, in row order
    packed: bool = True
    _flex_masks: dict = field(default_factory=dict, repr=False)
    _varlen: tuple[Tensor, int] | None = field(default=None, repr=False)

    @property
    def tokens(self) -> int:
        return self.labels.shape[1]

    def flex_mask(self, block: int | None = None):
        """FlexAttention ``BlockMask`` over the layout rows (one sequence of ``B*N``), built on first use."""
        block = flex.FLEX_BLOCK if block is None else block
        if block not in self._flex_masks:
            self._flex_masks[block] = flex.region_block_mask(self.run_id[None], block)
        return self._flex_masks[block]

    def varlen_sequences(self) -> tuple[Tensor, int]:
        """``(cu_seq [regions + 1] int32, longest region)``: each region one varlen sequence, built on first use."""
        if self._varlen is None:
            self._varlen = varlen.region_sequences(self.run_id)
        return self._varlen

    def to_layout(self, x: Tensor) -> Tensor:
        """``[B*N, ...]`` tokens in image order -> layout order (a permutation: its backward is a gather too)."""
        return gather_rows(x, self.order, self.inverse)

    def from_layout(self, x: Tensor) -> Tensor:
        """``[B*N, ...]`` tokens in layout order -> image order."""
        return gather_rows(x, self.inverse, self.order)


@torch.compiler.disable  # Python loops over the regions: eager, so a compiled network never recompiles per partition
def build_region_layout(labels: Tensor, block_size: int | None = None, packed: bool = True) -> RegionLayout:
    """The :class:`RegionLayout` of a token label map ``[B, N]`` (arbitrary integer ids, compared per item).

    ``block_size``: the packed blocks' length, None for :func:`packed_block_size` of the labels' device.

    Packed: one host synchronisation (the region lengths); everything else stays on the labels' device.
    ``packed=False`` (FlexAttention): no host synchronisation at all.
    """
    if not isinstance(labels, Tensor) or labels.ndim != 2:
        raise ValueError(f"labels must be a [B, N] integer tensor, got {getattr(labels, 'shape', labels)}")
    check_labels("labels", labels, tuple(labels.shape))
    block_size = packed_block_size(labels.device) if block_size is None else block_size
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    batch, n = labels.shape
    device = labels.device
    total = batch * n
    sorted_labels, order = labels.sort(dim=1, stable=True)
    is_start = torch.ones_like(sorted_labels, dtype=torch.bool)
    is_start[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    flat_order = (order + torch.arange(batch, device=device)[:, None] * n).flatten()
    if not packed:
        inverse = torch.empty_like(flat_order)
        inverse[flat_order] = torch.arange(total, device=device)
        run_id = torch.cumsum(is_start.flatten(), 0) - 1  # a new run at each region and each item
        return RegionLayout(labels, flat_order, inverse, run_id, block_size, 0, None, None, None, None, None, (),
                            packed=False)
    starts = is_start.flatten().nonzero().squeeze(1)
    lengths = torch.diff(starts, append=starts.new_tensor([total]))
    lengths_list = lengths.tolist()

    small = [r for r, length in enumerate(lengths_list) if length <= block_size]
    by_length: dict[int, list[int]] = {}
    for r, length in enumerate(lengths_list):
        if length > block_size:
            by_length.setdefault(length, []).append(r)
    sequence = small + [r for length in sorted(by_length) for r in by_length[length]]
    if len(sequence) == len(lengths_list) and sequence == list(range(len(sequence))):
        layout_order = flat_order  # already small-first (e.g. no large region)
        run_len = lengths
    else:
        seq = torch.tensor(sequence, device=device)
        run_len = lengths[seq]
        new_start = torch.cumsum(run_len, 0) - run_len
        shift = torch.repeat_interleave(starts[seq] - new_start, run_len, output_size=total)
        layout_order = flat_order[torch.arange(total, device=device) + shift]
    inverse = torch.empty_like(layout_order)
    inverse[layout_order] = torch.arange(total, device=device)
    run_id = torch.repeat_interleave(torch.arange(len(sequence), device=device), run_len, output_size=total)

    # Next-fit packing of the small regions: a block is a contiguous range of rows holding whole regions.
    block_first, block_fill = [], []
    fill, row = block_size, 0
    for r in small:
        length = lengths_list[r]
        if fill + length > block_size:
            block_first.append(row)
            block_fill.append(0)
            fill = 0
        block_fill[-1] += length
        fill += length
        row += length
    small_rows = row
    block_index = block_mask = slot_of_row = row_of_slot = filler_slots = None
    if block_first:
        n_blocks = len(block_first)
        first = torch.tensor(block_first, device=device)
        fills = torch.tensor(block_fill, device=device)
        offsets = torch.arange(block_size, device=device)
        rows = first[:, None] + offsets  # [n_blocks, T]
        valid = offsets < fills[:, None]
        block_index = rows.clamp(max=small_rows - 1).flatten()
        # Slots past a block's own regions read some row but get unique ids: they attend only to themselves.
        filler_ids = -1 - torch.arange(n_blocks * block_size, device=device)
        slot_ids = torch.where(valid.flatten(), run_id[block_index], filler_ids)
        ids = slot_ids.view(n_blocks, 1, block_size)
        block_mask = ids.unsqueeze(-1) == ids.unsqueeze(-2)
        block_of_row = torch.repeat_interleave(torch.arange(n_blocks, device=device), fills, output_size=small_rows)
        slot_of_row = block_of_row * block_size + torch.arange(small_rows, device=device) - first[block_of_row]
        row_of_slot = torch.zeros(n_blocks * block_size, dtype=torch.long, device=device)
        row_of_slot[slot_of_row] = torch.arange(small_rows, device=device)
        filler_slots = (~valid).flatten().nonzero().squeeze(1)
    groups = tuple((len(by_length[length]), length) for length in sorted(by_length))
    return RegionLayout(labels, layout_order, inverse, run_id, block_size, small_rows, block_index, block_mask,
                        slot_of_row, row_of_slot, filler_slots, groups)


def packed_block_size(device: torch.device) -> int:
    """Default block length of the packed path: 64 on the CPU, where training runs blocks of 64 in the matmul
    form of :func:`ratlit.models.region_attention.sdpa.attention` (R-MSA forward + backward 20% faster than
    128-token SDPA blocks on SLIC and on one token per region, equal on Felzenszwalb and one region; inference
    at 512x512 1% faster), else 128."""
    return 64 if torch.device(device).type == "cpu" else 128
