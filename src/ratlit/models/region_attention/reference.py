"""The dense reference of R-MSA (Eq. 3-4 as written, O(N^2) memory) and the input checks of q, k, v."""

from __future__ import annotations

import torch
from torch import Tensor

from ratlit.utils.checks import check_labels


def check_qkv(q: Tensor, k: Tensor, v: Tensor, labels: Tensor) -> None:
    """One clear error for ``q, k [B, heads, N, d]``, ``v [B, heads, N, d_v]`` and ``labels [B, N]`` that do not fit."""
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
    check_qkv(q, k, v, labels)
    labels = labels.to(q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    same = labels[:, None, :, None] == labels[:, None, None, :]
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    scores = scores + torch.where(same, 0.0, mask_value).to(scores.dtype)
    return torch.matmul(scores.softmax(dim=-1), v)
