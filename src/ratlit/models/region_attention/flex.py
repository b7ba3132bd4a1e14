"""The FlexAttention path of R-MSA (CUDA): a block mask over the region-sorted tokens, no packing and no host
synchronisation, and the compiled kernel."""

from __future__ import annotations

import warnings
from functools import cache
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ratlit.models.region_attention.layout import RegionLayout

# Granularity of the FlexAttention block mask: a multiple of the kernel's tiles (64 x 64 on Hopper in bf16 and
# fp32). 64 skips more of the partial blocks at region ends than 128: on an H200 R-MSA forward + backward ran
# 4-33% faster at 64 in all eight cases of benchmarks/bench_gpu.py (experiments/results/bench_gpu_h200).
FLEX_BLOCK = 64


def flex_tokens(q: Tensor, k: Tensor, v: Tensor, layout: RegionLayout, scale: float) -> Tensor:
    """FlexAttention R-MSA on tokens in (sorted) layout order: ``q, k [B*N, heads, d], v [B*N, heads, d_v]``."""
    # The whole batch is one sequence of B*N rows; regions never span two items, so the block mask keeps them apart.
    qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    # The kernel stays compiled when the network runs eagerly (evaluation under ratlit.training.compiling.eager()):
    # eager FlexAttention would materialise the whole score matrix.
    with torch.compiler.set_stance("default"):
        out = _compiled_flex(q.device.type)(qs, ks, vs, block_mask=layout.flex_mask(), scale=scale)
    return out.squeeze(0).transpose(0, 1)


_FLEX_BROKEN: set[str] = set()


def flex_usable(device_type: str) -> bool:
    """Whether FlexAttention is importable and has not failed on ``device_type`` in this process."""
    if device_type in _FLEX_BROKEN:
        return False
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def disable_flex(device_type: str, err: Exception) -> None:
    """Stop using FlexAttention on ``device_type`` after ``err``, with one warning (the packed path takes over)."""
    _FLEX_BROKEN.add(device_type)
    warnings.warn(f"FlexAttention failed on {device_type} ({err!r}); using the packed SDPA region attention instead.",
                  stacklevel=2)


@cache
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
    # last index of each token's run
    run_end = torch.flip(torch.cummin(torch.flip(torch.where(is_end, positions, n), [1]), dim=1).values, [1])
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
