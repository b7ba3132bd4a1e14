"""Guardrails for runs that would not finish: a CPU run's planned steps timed at its measured speed (the
estimate before the run starts, and the words both use: :mod:`ratlit.training.preflight`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from ratlit.training.preflight import planned_time_problem
from ratlit.utils.errors import InputError

log = logging.getLogger(__name__)


class CpuTimeEstimate(Callback):
    """On a CPU, times ``after`` training steps (from the end of the first, which warms up; a validation in
    between restarts the timing) and, when the planned ``trainer.max_steps`` would take more than ``limit_h``
    hours at that speed, says so once with the presets meant for a CPU (``task``'s own, conf/experiment/cpu_<task>).
    ``estimate_s`` keeps the estimate."""

    def __init__(self, after: int = 5, limit_h: float = 1.0, task: str | None = None) -> None:
        if after < 1 or limit_h <= 0:
            raise InputError(f"cpu_estimate needs after >= 1 and limit_h > 0, got {after} and {limit_h}")
        self.after, self.limit_h, self.task = after, float(limit_h), task
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
        problem = planned_time_problem(rate, planned, step, self.limit_h, self.task)
        if problem is not None and trainer.is_global_zero:
            log.warning("%s", problem)
