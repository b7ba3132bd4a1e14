"""Guardrails for runs that would not finish: a CPU run's planned steps timed at its measured speed."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def duration_text(seconds: float) -> str:
    """``~139 h``, ``~25 min``: a rough duration for a log line."""
    return f"~{seconds / 3600:.0f} h" if seconds >= 5400 else f"~{seconds / 60:.0f} min"


class CpuTimeEstimate(Callback):
    """On a CPU, times ``after`` training steps (from the end of the first, which warms up; a validation in
    between restarts the timing) and, when the planned ``trainer.max_steps`` would take more than ``limit_h``
    hours at that speed, says so once with the presets meant for a CPU. ``estimate_s`` keeps the estimate."""

    def __init__(self, after: int = 5, limit_h: float = 1.0) -> None:
        if after < 1 or limit_h <= 0:
            raise ValueError(f"cpu_estimate needs after >= 1 and limit_h > 0, got {after} and {limit_h}")
        self.after, self.limit_h = after, float(limit_h)
        self.estimate_s: float | None = None
        self._t0: float | None = None
        self._step0, self._done = 0, False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._done = None, pl_module.device.type != "cpu"

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = None  # validation time is not training speed

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._done:
            return
        step = trainer.global_step
        if self._t0 is None:
            self._t0, self._step0 = time.perf_counter(), step
            return
        if step - self._step0 < self.after:
            return
        self._done = True
        rate = (step - self._step0) / max(time.perf_counter() - self._t0, 1e-9)
        planned = trainer.max_steps
        if planned is None or planned < 0:
            return
        self.estimate_s = (planned - step) / rate
        if self.estimate_s > self.limit_h * 3600 and trainer.is_global_zero:
            log.warning("at %.3g steps/s the %d steps take %s on this CPU; for a CPU try experiment=cpu_ct or "
                        "experiment=smoke (or fewer trainer.max_steps)", rate, planned, duration_text(self.estimate_s))
