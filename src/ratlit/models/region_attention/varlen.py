"""The variable-length flash attention path of R-MSA (CUDA, float16 / bfloat16): every region one sequence.

With tokens in layout order every region is a contiguous run of rows, so the runs' starts are exactly the
``cu_seq`` of ``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.10): flash attention over each region
alone, with no mask and no padding beyond the kernel's tiles; its backward is flash attention's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ratlit.utils.errors import InputError

if TYPE_CHECKING:
    from ratlit.models.region_attention.layout import RegionLayout

VARLEN_DTYPES = (torch.float16, torch.bfloat16)  # flash attention's only kernels
MAX_HEAD_DIM = 256


def varlen_available() -> bool:
    """Whether this torch has ``torch.nn.attention.varlen`` (2.10 and newer)."""
    try:
        import torch.nn.attention.varlen  # noqa: F401
    except ImportError:
        return False
    return True


def varlen_unsupported(q: Tensor, v: Tensor) -> str | None:
    """Why the varlen kernel cannot run ``q [T, heads, d]``, ``v [T, heads, d_v]`` (None: it can)."""
    if q.device.type != "cuda":
        return f"the tensors are on {q.device.type}, and varlen_attn has only a CUDA kernel"
    if q.dtype not in VARLEN_DTYPES:
        return f"{q.dtype} is not float16 / bfloat16 (train with trainer.precision=bf16-mixed)"
    d = q.shape[-1]
    if v.shape[-1] != d or d % 8 or d > MAX_HEAD_DIM:
        return f"head dims {d} (q, k) and {v.shape[-1]} (v) must be equal, a multiple of 8 and at most {MAX_HEAD_DIM}"
    if not varlen_available():
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (torch >= 2.10)"
    return None


def region_sequences(run_id: Tensor) -> tuple[Tensor, int]:
    """The region runs of layout rows as varlen sequences: ``cu_seq [regions + 1]`` (int32, on ``run_id``'s
    device: 0, the run starts, the row count) and the longest run's length (a host int).

    ``run_id [T]`` must be non-decreasing (every layout's is). Two small host reads (the region count and the
    longest run), once per layout, so once per network forward, never per layer.
    """
    total = run_id.numel()
    is_start = torch.ones_like(run_id, dtype=torch.bool)
    is_start[1:] = run_id[1:] != run_id[:-1]
    starts = is_start.nonzero().squeeze(1)
    cu_seq = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
    max_len = int(torch.diff(cu_seq).max()) if total else 0
    return cu_seq, max_len


def _kernel():
    """torch's ``varlen_attn`` (imported on first use: it exists from torch 2.10; tests substitute a reference)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def varlen_tokens(q: Tensor, k: Tensor, v: Tensor, layout: RegionLayout, scale: float) -> Tensor:
    """Varlen R-MSA on tokens in layout order: ``q, k [B*N, heads, d], v [B*N, heads, d] -> [B*N, heads, d]``."""
    why = varlen_unsupported(q, v)
    if why is not None:
        raise InputError(f"region_impl='varlen' needs CUDA, float16 / bfloat16 and a head dim that is a multiple "
                         f"of 8 up to {MAX_HEAD_DIM}, but {why}; use region_impl=auto (flex or packed)")
    if q.shape[0] == 0:  # no tokens: nothing to attend (the kernel wants at least one sequence)
        return v.clone()
    cu_seq, max_len = layout.varlen_sequences()
    return _kernel()(q, k, v, cu_seq, cu_seq, max_len, max_len, scale=scale)
