"""Reporting callbacks: region panels, per-image test scores, the best validation score, W&B summaries,
a step-counting progress bar, and the run's config stored in every checkpoint.

The LightningModule only computes scores; what is shown, written and summarised is decided here.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics import MaxMetric

from ratlit.files import atomic_output, write_text_atomic

log = logging.getLogger(__name__)

PANEL_COLUMNS = ("LQ", "restored", "HQ", "|error|", "regions")
PER_IMAGE_COLUMNS = ("name", "psnr", "ssim", "input_psnr", "input_ssim", "psnr_gain", "ssim_gain")


# --------------------------------------------------------------------------------------------- pictures


def display_image(x: Tensor, value_range: Sequence[float] | None = None, window: Sequence[float] | None = None,
                  cmap: str = "gray") -> np.ndarray:
    """A ``[C, H, W]`` image in the task's normalised units as ``[H, W, 3]`` RGB in [0, 1] for display.

    ``value_range`` ``(lo, hi)``: the physical values that 0 and 1 stand for (CT: HU). ``window``
    ``(level, width)`` in those units (CT soft tissue: 40, 400); None shows [0, 1]. Single-channel images get
    the colour map ``cmap`` (matplotlib name); RGB images are shown as they are.
    """
    x = x.detach().float().cpu()
    if x.shape[0] >= 3:
        return x[:3].clamp(0, 1).permute(1, 2, 0).numpy()
    return colourise(to_display_scale(x[0], value_range, window).numpy(), cmap)


def to_display_scale(x: Tensor, value_range: Sequence[float] | None, window: Sequence[float] | None) -> Tensor:
    """Normalised values to [0, 1] of the display window (no window: clamped to [0, 1])."""
    if window is not None:
        if value_range is None:
            raise ValueError("a display window needs value_range, the physical values of 0 and 1")
        lo, hi = float(value_range[0]), float(value_range[1])
        level, width = float(window[0]), float(window[1])
        if width <= 0:
            raise ValueError(f"display window width must be positive, got {width}")
        x = (lo + x * (hi - lo) - (level - width / 2)) / width
    return x.clamp(0, 1)


def colourise(gray: np.ndarray, cmap: str = "gray") -> np.ndarray:
    """``[H, W]`` in [0, 1] through a matplotlib colour map: ``[H, W, 3]``."""
    import matplotlib

    if cmap not in matplotlib.colormaps:
        raise ValueError(f"unknown colour map {cmap!r}; e.g. gray, hot, inferno, magma, viridis")
    return matplotlib.colormaps[cmap](gray)[..., :3]


def error_scale(value_range: Sequence[float] | None, window: Sequence[float] | None) -> float:
    """Factor from normalised error to the display window's scale (1 without a window)."""
    if window is None or value_range is None:
        return 1.0
    return (float(value_range[1]) - float(value_range[0])) / float(window[1])


def render_panels(rows: list[dict[str, Any]], value_range: Sequence[float] | None = None,
                  window: Sequence[float] | None = None, cmap: str = "gray", error_gain: float = 4.0) -> np.ndarray:
    """Rows of LQ | restored | HQ | |error| | regions, each column titled (with the image's PSNR), as one
    ``[H, W, 3]`` uint8 picture. A row: ``lq``, ``restored``, ``hq`` ``[C, H, W]``, ``regions`` ``[H, W]``,
    ``psnr`` and ``input_psnr`` (dB) and optionally ``name``. The error is shown on the display scale (the
    window's width with a window), times ``error_gain``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import mark_boundaries

    height, width = rows[0]["lq"].shape[-2:]
    size = 2.6
    fig, axes = plt.subplots(len(rows), 5, figsize=(5 * size, len(rows) * size * height / width + 0.45 * len(rows)),
                             squeeze=False)
    scale = error_gain * error_scale(value_range, window)
    for axs, row in zip(axes, rows):
        lq = display_image(row["lq"], value_range, window, cmap)
        error = (row["restored"].float() - row["hq"].float()).abs().mean(0).cpu() * scale
        pictures = [
            lq,
            display_image(row["restored"], value_range, window, cmap),
            display_image(row["hq"], value_range, window, cmap),
            colourise(error.clamp(0, 1).numpy(), "gray"),
            mark_boundaries(lq, row["regions"].cpu().numpy(), color=(1, 0.2, 0.2)),
        ]
        regions = int(row["regions"].unique().numel())
        gain = f" x{error_gain:g}" if error_gain != 1 else ""
        titles = [f"LQ {row['input_psnr']:.2f} dB", f"restored {row['psnr']:.2f} dB", "HQ", f"|error|{gain}",
                  f"regions ({regions})"]
        for ax, picture, title in zip(axs, pictures, titles):
            ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if row.get("name"):
            axs[0].set_ylabel(str(row["name"])[:40], fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture


class RegionPanels(Callback):
    """The first ``count`` validation images as titled panels (``render_panels``), at every validation: to
    TensorBoard and W&B (as images) and to ``dirpath`` as ``val_step<N>.png``.

    ``value_range`` / ``window`` / ``cmap``: how images are displayed (``display_image``); the metrics are not
    affected (they stay on the task's range). ``error_gain`` multiplies the error column.
    """

    def __init__(self, count: int = 2, dirpath: str | None = None, value_range: Sequence[float] | None = None,
                 window: Sequence[float] | None = None, cmap: str = "gray", error_gain: float = 4.0) -> None:
        if count < 0:
            raise ValueError(f"panels count must be >= 0, got {count}")
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
            from skimage import io as skio

            path = Path(self.dirpath) / f"val_step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(path, ".png") as tmp:
                skio.imsave(tmp, panel, check_contrast=False)
        self.rows = []


# ------------------------------------------------------------------------------------------ test scores


def per_image_csv(rows: list[dict[str, Any]]) -> str:
    """One line per image: name, the restored image's and the input's PSNR / SSIM, and the gains."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PER_IMAGE_COLUMNS)
    for row in rows:
        writer.writerow([row["name"], *(f"{row[k]:.6f}" for k in PER_IMAGE_COLUMNS[1:])])
    return text.getvalue()


class PerImageScores(Callback):
    """Per-image test scores (restored and input): ``path`` as CSV, and a ``wandb.Table`` (``test/per_image``)
    in every W&B run. ``rows`` holds them after a test (this process's images; the CSV is written only when
    one process saw every image)."""

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
        for i, name in enumerate(names):
            row = {"name": str(name), **{k: float(outputs[k][i]) for k in ("psnr", "ssim", "input_psnr", "input_ssim")}}
            row["psnr_gain"] = row["psnr"] - row["input_psnr"]
            row["ssim_gain"] = row["ssim"] - row["input_ssim"]
            self.rows.append(row)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows or not trainer.is_global_zero:
            return
        if self.path and trainer.world_size == 1:  # with DDP each process saw only its share
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
            raise ValueError(f"skip must be >= 1, got {skip}")
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


# -------------------------------------------------------------------------------------------------- W&B


class WandbSummaries(Callback):
    """Tells W&B what each run's summary holds, for comparing runs: val PSNR / SSIM keep their max and last
    value; everything else its last value: the best validation with its step (``val/best_psnr``,
    ``val/best_ssim``, ``val/best_step``), test mean and std (``test/psnr``, ``test/psnr_std``, ...) and the
    input's scores (``test/input_psnr``, ...)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                run = logger.experiment
                run.define_metric("trainer/global_step")
                for key in ("val/psnr", "val/ssim"):
                    run.define_metric(key, step_metric="trainer/global_step", summary="max,last")
                run.define_metric("train/loss", step_metric="trainer/global_step", summary="min,last")


def comparison_columns(task: str, model: str, attention: str | None, loss: str, partition: str,
                       seed: int | None = None) -> dict[str, Any]:
    """The top-level W&B config columns that runs are grouped and compared by (``seed``: None when unseeded)."""
    return {"task": task, "model": model, "attention": attention or "none", "loss": loss, "partition": partition,
            "seed": None if seed is None else int(seed)}


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
        if bar is not None and self._should_update(trainer.global_step, bar.total or 0):
            if not bar.disable:
                bar.n = trainer.global_step
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


# ------------------------------------------------------------------------------------ console messages

# Messages a ratlit user cannot act on, matched exactly (everything else still shows).
UNACTIONABLE_WARNINGS = (
    # Lightning's own pytree helper on torch >= 2.10; fixed in Lightning, nothing to change in user code.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
UNACTIONABLE_LOG_PREFIXES = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
)


class _DropPrefixes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(UNACTIONABLE_LOG_PREFIXES)


def quiet_unactionable_messages() -> None:
    """Hide Lightning's product tips and a deprecation inside Lightning itself, by their exact text."""
    import warnings

    for pattern in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropPrefixes) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropPrefixes())
