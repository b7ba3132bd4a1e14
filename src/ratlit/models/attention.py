"""Self-attention of RAT: region attention (R-MSA), window attention (W-MSA), global MSA.

``region_attention`` is exact masked attention (Eq. 3-4 with lambda -> -inf) computed without
ever forming an N x N mask or score matrix:

* tokens are sorted by region, so every region is one contiguous run;
* regions no larger than ``block_size`` are packed whole into blocks of ``block_size`` tokens and
  all blocks run as one batched SDPA call with a small block-diagonal mask (a block never holds
  part of a region, so no keys outside the block are needed);
* each larger region runs as one unmasked SDPA call over exactly its own tokens.

Work is ``sum(min(n_i, block) * ...)`` instead of ``N^2``, memory is linear in N, and the fused
SDPA kernels (flash / memory-efficient on CPU and CUDA) do the arithmetic. On CUDA, FlexAttention with a
block mask over the region-sorted tokens is used when available (no packing, no host synchronisation).

The sort, the packing and the masks depend only on the label map: a :class:`RegionLayout` holds them, built
once per network forward and shared by every R-MSA layer, and a layer moves its input tokens ``x [B*N, C]``
into layout order once (norm, qkv, projection and MLP are per token) instead of gathering q, k and v.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ratlit.models.blocks import scaled_output
from ratlit.utils.checks import check_labels

ATTENTION_MODES = ("rmsa", "wmsa", "msa")
REGION_IMPLS = ("auto", "sparse", "flex", "dense")
SCALE_CHOICES = ("heads", "head_dim")
# Granularity of the FlexAttention block mask: a multiple of the kernel's tiles (64 x 64 on Hopper in bf16 and
# fp32). 64 skips more of the partial blocks at region ends than 128: on an H200 R-MSA forward + backward ran
# 4-33% faster at 64 in all eight cases of benchmarks/bench_gpu.py (experiments/results/bench_gpu_h200).
FLEX_BLOCK = 64


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
    needs no gather. Not packed (for FlexAttention): sorted by item and region only, built without a host
    synchronisation (the packing needs the region lengths on the host); the block fields are then None.
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

    @property
    def tokens(self) -> int:
        return self.labels.shape[1]

    def flex_mask(self, block: int | None = None):
        """FlexAttention ``BlockMask`` over the layout rows (one sequence of ``B*N``), built on first use."""
        block = FLEX_BLOCK if block is None else block
        if block not in self._flex_masks:
            self._flex_masks[block] = region_block_mask(self.run_id[None], block)
        return self._flex_masks[block]

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
        slot_ids = torch.where(valid.flatten(), run_id[block_index], -1 - torch.arange(n_blocks * block_size, device=device))
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
    ``impl``: ``"sparse"`` (packed block-sparse SDPA), ``"flex"`` (FlexAttention block mask),
    ``"dense"`` (reference), ``"auto"`` (flex on CUDA, sparse on the CPU: see :func:`auto_region_impl`).
    """
    if impl not in REGION_IMPLS:
        raise ValueError(f"impl must be one of {REGION_IMPLS}, got {impl!r}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    layout = labels if isinstance(labels, RegionLayout) else None
    _check_qkv(q, k, v, layout.labels if layout is not None else labels)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if impl == "dense" or q.shape[0] * q.shape[2] == 0:  # (no tokens: the reference gives the empty result)
        return dense_region_attention(q, k, v, layout.labels if layout is not None else labels, scale)
    if layout is None:
        layout = build_region_layout(labels.to(q.device), block_size, packed=wants_packed_layout(impl, q.device, q.dtype))
    batch, heads, n, _ = q.shape

    def tokens(t: Tensor) -> Tensor:  # [B, heads, N, d] -> [B*N, heads, d] in layout order
        return layout.to_layout(t.transpose(1, 2).reshape(batch * n, heads, t.shape[-1]))

    out = region_attention_tokens(tokens(q), tokens(k), tokens(v), layout, scale, impl)
    return layout.from_layout(out).view(batch, n, heads, v.shape[-1]).transpose(1, 2)


def packed_block_size(device: torch.device) -> int:
    """Default block length of the packed path: 64 on the CPU, where training runs blocks of 64 in the matmul
    form of :func:`attention` (R-MSA forward + backward 20% faster than 128-token SDPA blocks on SLIC and on
    one token per region, equal on Felzenszwalb and one region; inference at 512x512 1% faster), else 128."""
    return 64 if torch.device(device).type == "cpu" else 128


def wants_packed_layout(impl: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``impl`` on ``device`` in ``dtype`` runs the packed path (else FlexAttention: a sorted layout)."""
    return (auto_region_impl(device, dtype) if impl == "auto" else impl) != "flex"


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a network's matmuls run in for input ``x``: autocast's where it is on, else ``x``'s own."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


def auto_region_impl(device: torch.device, dtype: torch.dtype) -> str:
    """What ``impl="auto"`` runs: FlexAttention on CUDA, the packed SDPA kernels on the CPU (and where flex failed).

    On an H200 (benchmarks/bench_gpu.py, experiments/results/bench_gpu_h200) flex (64-token blocks) on the
    sorted, sync-free layout ran R-MSA forward + backward 1.4-1.9x faster than the packed path in seven of
    eight cases, bf16 and fp32, and within 2% in the eighth; on the CPU FlexAttention has no backward.
    ``dtype`` is kept for devices where the choice may differ by precision.
    """
    if device.type == "cuda" and _flex_usable("cuda"):
        return "flex"
    return "sparse"


@torch.compiler.disable  # data-dependent shapes: run eagerly inside a compiled network, never recompile per partition
def region_attention_tokens(
    q: Tensor, k: Tensor, v: Tensor, layout: RegionLayout, scale: float, impl: str = "auto", qkv: Tensor | None = None
) -> Tensor:
    """Region attention on tokens already in layout order: ``q, k [B*N, heads, d], v [B*N, heads, d_v] -> [B*N, heads, d_v]``.

    ``qkv [B*N, 3, heads, d]``, when q, k, v are its slices, lets the packed path gather once instead of three times.
    """
    chosen = auto_region_impl(q.device, q.dtype) if impl == "auto" else impl
    if chosen == "flex":
        try:
            return _flex_tokens(q, k, v, layout, scale)
        except Exception as err:  # compilation can fail on exotic set-ups; the sparse path is always exact
            if impl == "flex":
                raise
            _disable_flex(q.device.type, err)
    if not layout.packed:
        # A sorted layout (built for flex): its rows are one sequence labelled by run id; pack that.
        inner = build_region_layout(layout.run_id[None], layout.block_size)
        out = _packed_tokens(inner.to_layout(q), inner.to_layout(k), inner.to_layout(v), inner, scale, None)
        return inner.from_layout(out)
    return _packed_tokens(q, k, v, layout, scale, qkv)


def _packed_tokens(q: Tensor, k: Tensor, v: Tensor, layout: RegionLayout, scale: float, qkv: Tensor | None) -> Tensor:
    heads, value_dim = q.shape[1], v.shape[-1]
    # The rows split into the small regions' part and one part per group of large regions. split, not
    # slicing: its backward is one cat, where each slice's backward would zero-fill a full-size gradient
    # and autograd would add them up.
    sizes = [layout.small_rows] + [count * length for count, length in layout.groups]
    if qkv is not None:
        parts = qkv.split(sizes)
        qkv_parts = [part.unbind(1) for part in parts]
    else:
        qkv_parts = list(zip(q.split(sizes), k.split(sizes), v.split(sizes)))
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
    for (qg, kg, vg), (count, length) in zip(qkv_parts[1:], layout.groups):
        # A group of equally long regions is a contiguous part: one batched, unmasked attention call, no gather.
        qg, kg, vg = (x.view(count, length, heads, x.shape[-1]).transpose(1, 2) for x in (qg, kg, vg))
        out = attention(qg, kg, vg, scale)
        outs.append(out.transpose(1, 2).reshape(count * length, heads, value_dim))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def matmul_form_is_faster(q: Tensor, training: bool) -> bool:
    """Whether the plain matmul form of :func:`attention` beats SDPA for ``q [..., T, d]`` (CPU, fp32/fp64).

    Measured with 8 heads x 32 and 2 threads: forward + backward over 8192 tokens, SDPA's flash kernel takes
    35 vs 11 ms at 16 tokens (W-MSA windows) and 36 vs 28 ms at 64, while at 128 the matmul form is 1.8x
    slower (its score tensor leaves the caches); a few regions of 73-200 tokens (score tensor <= 8 MiB) run
    1.1-1.5x faster in the matmul form. Forward only (inference), it wins at 16 tokens (3x) but not at 64.
    The cost is memory: training keeps the probabilities for backward, ``heads * T`` floats per token (at 64
    tokens and 8 heads as much as one 512-wide MLP activation), where SDPA keeps one float per token and head.
    """
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64):
        return False
    tokens = q.shape[-2]
    if not training:
        return tokens <= 32
    score_bytes = q[..., 0].numel() * tokens * q.element_size()
    return tokens <= 64 or (tokens <= 200 and score_bytes <= 8 * 2**20)


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """``softmax(q k^T * scale) v`` over ``[..., T, d]``; ``mask`` (bool, broadcastable to ``[..., T, T]``, True
    where a query may attend, at least one per row) restricts it. SDPA, or the matmul form where that is faster."""
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not matmul_form_is_faster(q, training):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


def _flex_tokens(q: Tensor, k: Tensor, v: Tensor, layout: RegionLayout, scale: float) -> Tensor:
    # The whole batch is one sequence of B*N rows; regions never span two items, so the block mask keeps them apart.
    qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    # The kernel stays compiled when the network runs eagerly (evaluation under ratlit.training.compiling.eager()):
    # eager FlexAttention would materialise the whole score matrix.
    with torch.compiler.set_stance("default"):
        out = _compiled_flex(q.device.type)(qs, ks, vs, block_mask=layout.flex_mask(), scale=scale)
    return out.squeeze(0).transpose(0, 1)


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
    # dynamic=True: one kernel for every sequence length, so whole images of any size (validation, test,
    # predict) never exceed the recompile limit and never fall back to the eager, dense-memory path.
    return torch.compile(flex_attention, dynamic=True) if device_type == "cuda" else flex_attention


def region_block_mask(sorted_labels: Tensor, block: int | None = None):
    """FlexAttention ``BlockMask`` for region-sorted tokens, built in O(N) from the region runs.

    Sorted, every region is a contiguous run, so a block of queries needs exactly the key blocks from the
    start of its first region to the end of its last one. A query block inside one region and a key block
    inside the same region are listed as *full* (the kernel skips ``mask_mod`` there: the inside of large
    regions); ``mask_mod`` settles the partial blocks at region ends.
    """
    from torch.nn.attention.flex_attention import BlockMask

    block = FLEX_BLOCK if block is None else block
    batch, n = sorted_labels.shape
    device = sorted_labels.device
    positions = torch.arange(n, device=device).expand(batch, n)
    is_start = torch.ones_like(sorted_labels, dtype=torch.bool)
    is_start[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    run_start = torch.cummax(torch.where(is_start, positions, 0), dim=1).values
    is_end = torch.ones_like(is_start)
    is_end[:, :-1] = is_start[:, 1:]
    run_end = torch.flip(torch.cummin(torch.flip(torch.where(is_end, positions, n), [1]), dim=1).values, [1])  # last index
    n_blocks = -(-n // block)
    first_q = torch.arange(n_blocks, device=device) * block
    last_q = torch.clamp(first_q + block - 1, max=n - 1)
    first_kv = run_start[:, first_q] // block  # [B, nb]
    last_kv = run_end[:, last_q] // block
    kv = first_kv[..., None] + torch.arange(n_blocks, device=device)  # [B, nb, nb] candidate key blocks
    listed = kv <= last_kv[..., None]
    # Full: the query block lies in one run (and is a whole block) and so does the key block.
    one_run = (run_start[:, first_q] == run_start[:, last_q]) & (last_q - first_q + 1 == block)
    full_lo = (run_start[:, first_q] + block - 1) // block  # first key block starting inside the run
    full_hi = (run_end[:, first_q] + 1) // block - 1  # last key block ending inside it
    full = listed & one_run[..., None] & (kv >= full_lo[..., None]) & (kv <= full_hi[..., None])
    partial = listed & ~full

    def packed(selected: Tensor) -> tuple[Tensor, Tensor]:
        # Selected blocks first (stable: ascending), as BlockMask expects; the rest is never read.
        order = torch.sort((~selected).to(torch.int8), dim=-1, stable=True).indices
        indices = kv.gather(-1, order).clamp(max=n_blocks - 1)
        return selected.sum(-1, dtype=torch.int32)[:, None], indices[:, None].to(torch.int32)

    # Compact int32 run ids: half the bytes that mask_mod reads per partial block, whatever the label values.
    ids = (torch.cumsum(is_start, dim=1, dtype=torch.int32) - 1)

    def mask_mod(b, h, q_idx, kv_idx):
        return ids[b, q_idx] == ids[b, kv_idx]

    counts, indices = packed(partial)
    full_counts, full_indices = packed(full)
    return BlockMask.from_kv_blocks(counts, indices, full_counts, full_indices, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(n, n))


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

    def forward(self, x: Tensor, labels: Tensor | RegionLayout | None = None, out_scale: Tensor | None = None) -> Tensor:
        """``out_scale [C]``: a factor per output channel, folded into the output projection (a layer scale)."""
        batch, height, width, channels = x.shape
        if self.mode == "wmsa":
            windows = self.window_tokens(window_partition(x, self.window_size), out_scale)
            return window_reverse(windows, self.window_size, batch, height, width)
        if self.mode == "msa":
            return self.window_tokens(x.reshape(batch, height * width, channels), out_scale).view(x.shape)
        if labels is None:
            raise ValueError("R-MSA needs a region label map (labels), got None")
        if self.region_impl == "dense":
            flat = labels.labels if isinstance(labels, RegionLayout) else labels.reshape(batch, height * width)
            qkv = self.qkv(x).reshape(batch, -1, 3, self.num_heads, channels // self.num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            out = dense_region_attention(q, k, v, flat, self.scale, self.mask_value)
            return self.project(out.transpose(1, 2).reshape(x.shape), out_scale)
        layout = self.region_layout(x, labels)
        out = self.region_tokens(layout.to_layout(x.reshape(-1, channels)), layout, out_scale)
        return layout.from_layout(out).view(x.shape)

    def region_layout(self, x: Tensor, labels: Tensor | RegionLayout | None) -> RegionLayout:
        """The :class:`RegionLayout` of ``labels`` ``[B, H, W]`` for ``x [B, H, W, C]`` (``labels`` may already be
        one), of the kind this layer's ``region_impl`` runs on; checked against x's token count."""
        if labels is None:
            raise ValueError("R-MSA needs a region label map (labels), got None")
        batch, height, width, _ = x.shape
        layout = labels if isinstance(labels, RegionLayout) else build_region_layout(
            labels.reshape(batch, height * width).to(x.device),
            packed=wants_packed_layout(self.region_impl, x.device, compute_dtype(x)))
        if layout.order.numel() != batch * height * width:
            raise ValueError(f"the region layout covers {layout.order.numel()} tokens, x has {batch * height * width}")
        return layout

    def region_tokens(self, x: Tensor, layout: RegionLayout, out_scale: Tensor | None = None) -> Tensor:
        """R-MSA on tokens already in layout order: ``[B*N, C] -> [B*N, C]`` (qkv and proj are per token)."""
        tokens, channels = x.shape
        qkv = self.qkv(x).view(tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.unbind(1)
        out = region_attention_tokens(q, k, v, layout, self.scale, self.region_impl, qkv=qkv)
        return self.project(out.reshape(tokens, channels), out_scale)

    def window_tokens(self, x: Tensor, out_scale: Tensor | None = None) -> Tensor:
        """Unmasked attention within each row of ``[B', T, C] -> [B', T, C]`` (windows for W-MSA, images for MSA)."""
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
