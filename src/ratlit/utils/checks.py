"""Input checks shared by the network, the attention kernels and the losses.

Every failure is a ``ValueError`` that names the offending argument, so a wrong call
fails at the boundary with a message instead of deep inside a matmul.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from ratlit.utils.errors import InputError

_CHECK_FINITE = [True]


@contextmanager
def finite_checks(enabled: bool) -> Iterator[None]:
    """Turn the NaN / inf checks of :func:`check_image` on or off inside the block.

    ``torch.isfinite(x).all()`` waits for the device; the training step turns it off and checks its inputs
    and loss once per step without waiting (:class:`DeferredFiniteCheck`).
    """
    previous = _CHECK_FINITE[0]
    _CHECK_FINITE[0] = enabled
    try:
        yield
    finally:
        _CHECK_FINITE[0] = previous


class DeferredFiniteCheck:
    """Non-blocking finiteness check of named tensors: queued on the device, read one step later.

    ``update(step, lq=..., loss=...)`` raises the ValueError of the previous update if any of its tensors held
    a NaN or infinite value, then queues the new one; ``flush()`` reads the last queued result (e.g. at the
    end of training). On the CPU the copy is immediate; on CUDA it overlaps the next step.
    """

    def __init__(self) -> None:
        self._pending: tuple[int, tuple[str, ...], Tensor, object] | None = None

    def update(self, step: int, **tensors: Tensor) -> None:
        self.flush()
        names = tuple(tensors)
        flags = torch.stack([torch.isfinite(t.detach()).all() for t in tensors.values()])
        host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=flags.is_cuda)
        host.copy_(flags, non_blocking=True)
        done = None
        if flags.is_cuda:
            done = torch.cuda.Event()
            done.record()
        self._pending = (step, names, host, done)

    def flush(self) -> None:
        if self._pending is None:
            return
        step, names, host, done = self._pending
        self._pending = None
        if done is not None:
            done.synchronize()  # waits for that copy only, queued a whole step ago: normally already done
        bad = [name for name, ok in zip(names, host.tolist(), strict=True) if not ok]
        if bad:
            error = ValueError(f"training step {step}: {', '.join(bad)} contains NaN or infinite values")
            error.phase, error.step = "training", step  # type: ignore[attr-defined]  # read by a sweep's record
            raise error


def check_image(name: str, x: object, channels: int | None = None) -> Tensor:
    """Check a float image batch ``[B, C, H, W]`` with finite values (the value check is skipped inside
    ``finite_checks(False)``)."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{name} must have shape [B, C, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise InputError(f"{name} must have {channels} channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
    if min(x.shape) == 0:
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")
    if _CHECK_FINITE[0] and not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return x


def check_labels(name: str, labels: object, shape: tuple[int, ...]) -> Tensor:
    """Check an integer label map of exactly ``shape`` (e.g. ``[B, H, W]`` or ``[B, N]``)."""
    if not isinstance(labels, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of integer region ids, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InputError(f"{name} must have an integer dtype (region ids), got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        if labels.ndim == len(shape) and labels.shape[0] != shape[0]:
            raise InputError(
                f"{name} has batch size {labels.shape[0]} but the images have batch size {shape[0]}"
            )
        raise InputError(f"{name} must have shape {list(shape)}, got {list(labels.shape)}")
    return labels


def check_same_batch(**tensors: Tensor) -> None:
    """Check that all named tensors share one batch size."""
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"batch sizes differ: {sizes}")
