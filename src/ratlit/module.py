"""The LightningModule: a restoration network, its loss, Adam + cosine annealing, PSNR / SSIM per image."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ratlit.validation import DeferredFiniteCheck, finite_checks

log = logging.getLogger(__name__)


def image_metrics(pred: Tensor, target: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Per-image PSNR and SSIM ``[B]`` on the task's intensity range."""
    dims = tuple(range(1, pred.ndim))
    psnr = peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=dims)
    ssim = structural_similarity_index_measure(pred, target, data_range=data_range, reduction="none")
    return psnr.reshape(-1), ssim.reshape(-1)


def per_image_csv(names: list[str], values: dict[str, list[float]]) -> str:
    """``name,<metric>,...`` lines, one per image."""
    rows = [",".join(["name", *values])]
    rows += [",".join([name, *(f"{values[k][i]:.6f}" for k in values)]) for i, name in enumerate(names)]
    return "\n".join(rows) + "\n"


def region_panel(lq: Tensor, restored: Tensor, hq: Tensor, regions: Tensor) -> np.ndarray:
    """One row ``[H, 5W, 3]`` in [0, 1]: LQ | restored | HQ | |error| (x4) | LQ with region boundaries."""
    from skimage.segmentation import mark_boundaries

    def rgb(x: Tensor) -> np.ndarray:
        x = x.detach().float().cpu().clamp(0, 1)
        return (x.repeat(3, 1, 1) if x.shape[0] == 1 else x[:3]).permute(1, 2, 0).numpy()

    error = (restored - hq).abs().mean(0, keepdim=True) * 4
    boundaries = mark_boundaries(rgb(lq), regions.cpu().numpy(), color=(1, 0.2, 0.2))
    return np.concatenate([rgb(lq), rgb(restored), rgb(hq), rgb(error), boundaries], axis=1)


class RestorationModule(L.LightningModule):
    """Trains ``net(lq, regions)`` with ``loss(pred, hq, regions)``; logs PSNR / SSIM mean and std.

    Adam (the public code's betas 0.5, 0.999) with cosine annealing from ``lr`` to ``eta_min`` over the
    trainer's ``max_steps``. Validation and test run on whole images.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        lr: float = 2e-4,
        betas: tuple[float, float] | list[float] = (0.5, 0.999),
        weight_decay: float = 0.0,
        eta_min: float = 1e-6,
        data_range: float = 1.0,
        panels: int = 2,
        panel_dir: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.net, self.loss = net, loss
        self.lr, self.betas, self.weight_decay, self.eta_min = lr, tuple(betas), weight_decay, eta_min
        self.data_range, self.panels, self.panel_dir = data_range, panels, panel_dir
        self.run_config: str | None = None  # the run's resolved YAML, stored in every checkpoint
        self.metrics = nn.ModuleDict({f"{stage}_{name}": CatMetric() for stage in ("val", "test") for name in ("psnr", "ssim")})
        self.test_names: list[str] = []
        self.test_values: dict[str, list[float]] = {}
        self.best_val: dict[str, float | int | None] = {"psnr": None, "ssim": None, "step": None}
        self._panel_rows: list[np.ndarray] = []
        # torch.compile of the network for the training step only: validation and test run whole images of
        # several sizes, which would recompile (see README, "Compiled training").
        self.compile_net = compile  # not `self.compile`: that is nn.Module.compile
        self._train_net: nn.Module | None = None
        self._finite = DeferredFiniteCheck()

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.net(lq, regions)

    def configure_model(self) -> None:
        if self.compile_net and self._train_net is None:
            # Not a registered submodule: the checkpoint keeps the plain network's keys.
            object.__setattr__(self, "_train_net", torch.compile(self.net))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        # No host sync for NaN / inf inside the step: lq, hq and the loss are checked once, without waiting,
        # and a bad value stops the run at the next step with a message naming it.
        with finite_checks(False):
            pred = (self.net if self._train_net is None else self._train_net)(batch["lq"], batch["regions"])
            loss = self.loss(pred, batch["hq"], batch["regions"])
        self._finite.update(self.global_step, lq=batch["lq"], hq=batch["hq"], loss=loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lq"].shape[0])
        return loss

    def on_train_end(self) -> None:
        self._finite.flush()

    def _evaluate(self, batch: dict[str, Any], stage: str) -> Tensor:
        pred = self(batch["lq"], batch["regions"])
        psnr, ssim = image_metrics(pred.float(), batch["hq"].float(), self.data_range)
        self.metrics[f"{stage}_psnr"].update(psnr)
        self.metrics[f"{stage}_ssim"].update(ssim)
        self.log(f"{stage}/loss", self.loss(pred, batch["hq"], batch["regions"]), batch_size=pred.shape[0], sync_dist=True)
        return pred

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self._evaluate(batch, "val")
        if len(self._panel_rows) < self.panels and self.trainer.is_global_zero:
            self._panel_rows.append(region_panel(batch["lq"][0], pred[0], batch["hq"][0], batch["regions"][0]))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")
        self.test_names.extend(batch["name"])

    def _log_summary(self, stage: str) -> dict[str, float]:
        summary = {}
        for name in ("psnr", "ssim"):
            metric = self.metrics[f"{stage}_{name}"]
            values = metric.compute().float().reshape(-1)  # gathered over all ranks
            metric.reset()
            summary[f"{stage}/{name}"] = values.mean().item()
            summary[f"{stage}/{name}_std"] = values.std(unbiased=False).item() if values.numel() > 1 else 0.0
            if stage == "test":
                self.test_values[name] = values.cpu().tolist()
        for key, value in summary.items():
            self.log(key, value, prog_bar=key in ("val/psnr", "val/ssim"), rank_zero_only=False)
        return summary

    def on_validation_epoch_end(self) -> None:
        summary = self._log_summary("val")
        if not self.trainer.sanity_checking and (self.best_val["psnr"] is None or summary["val/psnr"] > self.best_val["psnr"]):
            self.best_val = {"psnr": summary["val/psnr"], "ssim": summary["val/ssim"], "step": self.global_step}
        if self._panel_rows and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._log_panels(np.concatenate(self._panel_rows, axis=0))
        self._panel_rows = []

    def on_test_epoch_start(self) -> None:
        self.test_names = []

    def on_test_epoch_end(self) -> None:
        self._log_summary("test")

    def _log_panels(self, panel: np.ndarray) -> None:
        """LQ | restored | HQ | error | regions, to every logger that takes images and to ``panel_dir``."""
        step = self.global_step
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image("val/panels", panel, step, dataformats="HWC")
            elif hasattr(logger, "log_image"):  # W&B
                logger.log_image("val/panels", [panel], step=step)
        if self.panel_dir:
            from skimage import io

            path = Path(self.panel_dir) / f"val_step{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            io.imsave(path, (panel * 255).round().astype(np.uint8), check_contrast=False)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        if total is None:
            total = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(total), 1), eta_min=self.eta_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["ratlit_config"] = self.run_config
        checkpoint["ratlit_best_val"] = dict(self.best_val)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val = dict(checkpoint.get("ratlit_best_val", self.best_val))
