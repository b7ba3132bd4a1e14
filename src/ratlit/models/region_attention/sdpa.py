"""Softmax attention over ``[..., T, d]`` (one call for the packed regions' blocks and for W-MSA / MSA): PyTorch's
SDPA, or on the CPU the plain matmul form where that is measured to be faster."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def matmul_form_is_faster(q: Tensor, training: bool) -> bool:
    """Whether the plain matmul form of :func:`attention` beats SDPA for ``q [..., T, d]`` (CPU, fp32/fp64).

    In training it wins up to 64 tokens and for a few regions of up to 200 (score tensor <= 8 MiB), and loses at
    128, where its score tensor leaves the caches. In inference it wins at 16 tokens but not at 64. The timings are in
    docs/performance.md, "CPU: the matmul form of attention".
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

