"""The learning-rate schedule: cosine annealing in closed form, re-aimed at the new end when a run is resumed with
another ``trainer.max_steps`` or learning rate, so the rate never climbs back (torch's CosineAnnealingLR keeps the
old length from the checkpoint and is recursive, so it rises again past it)."""

from __future__ import annotations

import logging
import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ratlit.utils.errors import InputError

log = logging.getLogger(__name__)


class CosineToEnd(LRScheduler):
    """Cosine from each group's learning rate to ``eta_min`` at step ``T_max``, then ``eta_min``.

    The schedule is a list of segments ``(s0, lrs, T)``; step ``s`` uses the last segment with ``s0 <= s``:
    ``lr(s) = eta_min + (lr0 - eta_min) * (1 + cos(pi * (s - s0) / (T - s0))) / 2`` (``eta_min`` from ``T`` on).
    A fresh run has one segment ``(0, lr, max_steps)``: torch's CosineAnnealingLR in closed form. Loading a
    checkpoint (``load_state_dict``) keeps the saved segments, so an unchanged run resumes on exactly the
    original curve; a new ``T_max`` adds a segment from the restored step and rate down to the new end, and a new
    learning rate (the optimiser's, as configured now) one from that rate. States of torch's CosineAnnealingLR
    (older runs) load as one segment.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if T_max < 1:
            raise InputError(f"T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.segments: list[tuple[int, list[float], int]] = [(0, lrs, self.T_max)]
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> list[float]:
        """Each group's learning rate at optimiser step ``step``."""
        start, lrs, end = next((seg for seg in reversed(self.segments) if seg[0] <= step), self.segments[0])
        if step >= end or end <= start:
            return [min(self.eta_min, lr) for lr in lrs]
        weight = (1 + math.cos(math.pi * (step - start) / (end - start))) / 2
        return [min(self.eta_min, lr) + (lr - min(self.eta_min, lr)) * weight for lr in lrs]

    def get_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["segments"] = [[s, list(lrs), t] for s, lrs, t in self.segments]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The saved schedule, then a new segment from the restored step where ``T_max`` or the configured
        learning rate changed; the optimiser's groups get the rate of the restored step."""
        configured, end = list(self.segments[-1][1]), self.T_max
        if "segments" in state_dict:
            segments = [(int(s), [float(v) for v in lrs], int(t)) for s, lrs, t in state_dict["segments"]]
        else:  # torch's CosineAnnealingLR
            segments = [(0, [float(v) for v in state_dict["base_lrs"]], int(state_dict["T_max"]))]
        step = int(state_dict["last_epoch"])
        self.segments, self.last_epoch = segments, step
        self.eta_min = float(state_dict.get("eta_min", self.eta_min))
        saved_lrs = [float(v) for v in state_dict.get("base_lrs", configured)]
        if not _same(configured, saved_lrs):  # model.optimizer.lr=... on resume: from that rate, now
            self.segments.append((step, configured, end))
        elif end != self.segments[-1][2]:  # trainer.max_steps=... on resume: from the current rate to the new end
            if step >= self.segments[-1][2] and end > step:  # a finished schedule: the rate stays at its end value
                rates = ", ".join(f"{lr:.3g}" for lr in self.lr_at(step))
                log.warning("resuming at step %d, where the learning-rate schedule had ended: the %d added steps run "
                            "at its end rate %s. To warm up again, give the rate to anneal from, e.g. "
                            "model.optimizer.lr=%.3g (the run's first rate)", step, end - step, rates,
                            max(saved_lrs or configured))
            self.segments.append((step, self.lr_at(step), end))
        self.base_lrs = configured
        self._last_lr = self.lr_at(step)
        for group, lr, lr0 in zip(self.optimizer.param_groups, self._last_lr, configured, strict=True):
            group["lr"], group["initial_lr"] = lr, lr0


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0) for x, y in zip(a, b, strict=True))
