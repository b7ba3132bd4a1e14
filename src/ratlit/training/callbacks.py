"""Reporting callbacks: region panels, per-image test scores, the best validation score, training speed,
a step-counting progress bar, a last validation at the end, and the run's config stored in every checkpoint.

The LightningModule only computes scores; what is shown, written and summarised is decided here.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics import MaxMetric

from ratlit.utils.display import colourise, render_panels, to_display_scale
from ratlit.utils.errors import InputError
from ratlit.utils.files import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

PER_IMAGE_COLUMNS = ("name", "group", "psnr", "ssim", "input_psnr", "input_ssim", "psnr_gain", "ssim_gain")


class RegionPanels(Callback):
    """The first ``count`` validation images as titled panels (``render_panels``), at every validation: to
    TensorBoard and W&B (as images) and to ``dirpath`` as ``val_step<N>.png``.

    ``value_range`` / ``window`` / ``cmap``: how images are displayed (``display_image``); the metrics are not
    affected (they stay on the task's range). ``error_gain`` multiplies the error column.
    """

    def __init__(self, count: int = 2, dirpath: str | None = None, value_range: Sequence[float] | None = None,
                 window: Sequence[float] | None = None, cmap: str = "gray", error_gain: float = 4.0) -> None:
        if count < 0:
            raise InputError(f"panels count must be >= 0, got {count}")
        to_display_scale(Tensor([0.0]), value_range, window)  # check the window now, not at the first validation
        colourise(np.zeros((1, 1)), cmap)
        self.count, self.dirpath, self.cmap, self.error_gain = count, dirpath, cmap, float(error_gain)
        self.value_range = None if value_range is None else tuple(float(v) for v in value_range)
        self.window = None if window is None else tuple(float(v) for v in window)
        self.rows: list[dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not isinstance(outputs, dict):
            return
        for i in range(min(batch["lq"].shape[0], self.count - len(self.rows))):
            self.rows.append({
                "lq": batch["lq"][i].detach().cpu(), "restored": outputs["pred"][i].detach().cpu(),
                "hq": batch["hq"][i].detach().cpu(), "regions": batch["regions"][i].detach().cpu(),
                "psnr": float(outputs["psnr"][i]), "input_psnr": float(outputs["input_psnr"][i]),
                "name": (outputs.get("name") or [None] * (i + 1))[i],
            })

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows or trainer.sanity_checking or not trainer.is_global_zero:
            return
        panel = render_panels(self.rows, self.value_range, self.window, self.cmap, self.error_gain)
        step = trainer.global_step
        caption = "LQ | restored | HQ | |error| | regions; " + ", ".join(
            f"{r.get('name') or i}: {r['psnr']:.2f} dB (input {r['input_psnr']:.2f})" for i, r in enumerate(self.rows))
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if isinstance(logger, WandbLogger):
                logger.log_image("val/panels", [panel], step=step, caption=[caption])
            elif hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image("val/panels", panel, step, dataformats="HWC")
        if self.dirpath:
            import imageio.v3 as iio

            # Encoded first: a full disk is then reported with the size the file needs.
            write_bytes_atomic(Path(self.dirpath) / f"val_step{step:07d}.png",
                               iio.imwrite("<bytes>", panel, extension=".png"))
        self.rows = []


# ------------------------------------------------------------------------------------------ test scores


def per_image_csv(rows: list[dict[str, Any]]) -> str:
    """One line per image: name, its group (patient, slide: what paired statistics resample), the restored
    image's and the input's PSNR / SSIM, and the gains, each at full float precision (shortest round trip)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PER_IMAGE_COLUMNS)
    for row in rows:
        writer.writerow([row["name"], row.get("group") or row["name"], *(repr(float(row[k]))
                                                                         for k in PER_IMAGE_COLUMNS[2:])])
    return text.getvalue()


class PerImageScores(Callback):
    """Per-image test scores (restored and input): ``path`` as CSV, and a ``wandb.Table`` (``test/per_image``)
    in every W&B run. ``rows`` holds them after a test: with several processes, gathered from all of them on
    rank 0, each image once (DDP's sampler repeats images to give every process as many), in data order."""

    def __init__(self, path: str | None = None, table_key: str = "test/per_image") -> None:
        self.path, self.table_key = path, table_key
        self.rows: list[dict[str, Any]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict):
            return
        names = outputs.get("name") or [f"{batch_idx}_{i}" for i in range(len(outputs["psnr"]))]
        groups = outputs.get("group") or names
        index = outputs.get("index")
        for i, name in enumerate(names):
            row = {"name": str(name), "group": str(groups[i]),
                   **{k: float(outputs[k][i]) for k in ("psnr", "ssim", "input_psnr", "input_ssim")}}
            row["index"] = int(index[i]) if index is not None else len(self.rows)
            row["psnr_gain"] = row["psnr"] - row["input_psnr"]
            row["ssim_gain"] = row["ssim"] - row["input_ssim"]
            self.rows.append(row)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            shares: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, self.rows)  # every rank takes part
            self.rows = [row for share in shares for row in share]
        self.rows = list({row["index"]: row for row in sorted(self.rows, key=lambda r: r["index"])}.values())
        if not self.rows or not trainer.is_global_zero:
            return
        if self.path:
            write_text_atomic(Path(self.path), per_image_csv(self.rows))
        data = [[r[k] for k in PER_IMAGE_COLUMNS] for r in self.rows]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(self.table_key, columns=list(PER_IMAGE_COLUMNS), data=data)


# ------------------------------------------------------------------------------------- best validation


class BestValidation(Callback):
    """The best ``monitor`` (max) seen at validation, with the other scores of that validation and its step.

    Tracked with torchmetrics' ``MaxMetric``; kept in checkpoints (a resumed run keeps its best) and logged
    as ``val/best_psnr``, ``val/best_ssim``, ``val/best_step`` (the W&B summary keeps their last, i.e. best,
    values). ``best`` is ``{"psnr": ..., "ssim": ..., "step": ...}`` (None before any validation).
    """

    def __init__(self, monitor: str = "val/psnr", also: Sequence[str] = ("val/ssim",)) -> None:
        self.monitor, self.also = monitor, tuple(also)
        self.maximum = MaxMetric()
        self.best: dict[str, float | int | None] = {self._short(monitor): None, **{self._short(k): None for k in also},
                                                    "step": None}

    @staticmethod
    def _short(key: str) -> str:
        return key.split("/", 1)[-1]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        previous = self.best[self._short(self.monitor)]
        self.maximum.update(value)
        if previous is not None and float(self.maximum.compute()) <= previous:
            return
        self.best = {self._short(self.monitor): value,
                     **{self._short(k): _float(trainer.callback_metrics.get(k)) for k in self.also},
                     "step": trainer.global_step}
        if trainer.is_global_zero:
            metrics = {f"val/best_{k}": v for k, v in self.best.items() if v is not None}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", self.best))
        value = self.best.get(self._short(self.monitor))
        self.maximum.reset()
        if value is not None:
            self.maximum.update(float(value))


class TrainingSpeed(Callback):
    """Training steps per second, timed from step ``skip`` (after compilation and warm-up) to the end of
    training, validation time left out; ``warmup_s`` is the time of the first ``skip`` steps (with a compiled
    network, mostly compilation). Synchronises the device twice per timing point, never per step.

    ``speed`` is ``{"steps_per_sec", "timed_steps", "warmup_s"}`` (None where training ran fewer steps);
    logged as ``train/steps_per_sec``.
    """

    def __init__(self, skip: int = 10) -> None:
        if skip < 1:
            raise InputError(f"skip must be >= 1, got {skip}")
        self.skip = skip
        self.speed: dict[str, float | int | None] = {"steps_per_sec": None, "timed_steps": None, "warmup_s": None}
        self._start = self._t0 = None
        self._step0 = 0
        self._paused = 0.0
        self._val_start: float | None = None

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._t0, self._step0, self._paused = time.perf_counter(), None, trainer.global_step, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._t0 is None and trainer.global_step - self._step0 == self.skip:
            self._t0 = self._now(pl_module)
            self._paused = 0.0
            self.speed["warmup_s"] = self._t0 - self._start
            self._step0 = trainer.global_step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is not None and not trainer.sanity_checking:
            self._val_start = self._now(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is not None:
            self._paused += self._now(pl_module) - self._val_start
            self._val_start = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = trainer.global_step - self._step0
        if self._t0 is None or steps < 1:
            return
        rate = steps / (self._now(pl_module) - self._t0 - self._paused)
        self.speed.update(steps_per_sec=rate, timed_steps=steps)
        log.info("training speed: %.2f steps/s over %d steps (first %d steps: %.1f s)", rate, steps, self.skip,
                 self.speed["warmup_s"])
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"train/steps_per_sec": rate}, step=trainer.global_step)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def find_callback(trainer: L.Trainer, kind: type) -> Any:
    """The trainer's first callback of ``kind``, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


# -------------------------------------------------------------------------------------- progress, config


class StepProgressBar(TQDMProgressBar):
    """A training bar that counts optimiser steps toward ``max_steps`` across epochs (runs are step-based:
    ``max_epochs`` is unbounded, so an epoch bar would read 'Epoch 13/-2')."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None)
        bar.initial = bar.n = bar.last_print_n = trainer.global_step  # a resumed run starts where it stopped
        bar.refresh()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        # One bar for the whole run (the parent class starts one per epoch).
        self.train_progress_bar.set_description(f"Step (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and self.is_enabled and (step % self.refresh_rate == 0 or step == bar.total):
            if not bar.disable:
                bar.n = step
                bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


class RunConfigInCheckpoint(Callback):
    """Stores the run's resolved config (YAML) in every checkpoint, so evaluate / predict rebuild the run."""

    def __init__(self, config_yaml: str) -> None:
        self.config_yaml = config_yaml

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["ratlit_config"] = self.config_yaml


class ValidateAtEnd(Callback):
    """Validate on the last training step when the ``val_check_interval`` schedule would not: a run shorter
    than the interval (or ending between two checks) still gets validated, and so a best checkpoint."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loop = trainer.fit_loop
        last_step = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        last_epoch = (
            trainer.max_epochs not in (None, -1)
            and trainer.current_epoch + 1 >= trainer.max_epochs
            and loop.epoch_loop.batch_progress.is_last_batch
        )
        if (last_step or last_epoch) and not trainer.should_stop:
            # Lightning validates a step at which the trainer is asked to stop (as for early stopping).
            trainer.should_stop = True
