"""The LightningModule: a restoration network, its loss, an optimiser and scheduler, PSNR / SSIM per image.

Reporting (panels, the per-image table, the best validation score, W&B) lives in ``ratlit.callbacks``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ratlit.compiling import compile_repeated_blocks, eager
from ratlit.cuda_graph import GraphedBackward
from ratlit.validation import DeferredFiniteCheck, finite_checks

log = logging.getLogger(__name__)

# Scores kept per image: of the restored image, and of the input (LQ) itself against the same HQ.
SCORES = ("psnr", "ssim", "input_psnr", "input_ssim")


def image_metrics(pred: Tensor, target: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Per-image PSNR and SSIM ``[B]`` on the task's intensity range."""
    dims = tuple(range(1, pred.ndim))
    psnr = peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=dims)
    ssim = structural_similarity_index_measure(pred, target, data_range=data_range, reduction="none")
    return psnr.reshape(-1), ssim.reshape(-1)


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The public code's Adam: lr 2e-4, betas (0.5, 0.999)."""
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def default_scheduler(optimizer: torch.optim.Optimizer, T_max: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing to 1e-6 over the run."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_max, eta_min=1e-6)


class RestorationModule(L.LightningModule):
    """Trains ``net(lq, regions)`` with ``loss(pred, hq, regions)``; logs PSNR / SSIM mean and std, and the
    input's own scores (``input_psnr``, ``input_ssim``: LQ against HQ on the same images).

    ``optimizer`` is a partial taking the parameters, ``scheduler`` a partial taking the optimiser (stepped
    every step; None keeps the learning rate constant); a scheduler with a length argument (``T_max``, ``total_steps``) left unset gets the trainer's
    ``max_steps``, so a resumed run that trains longer stretches it. Validation and test run on whole images;
    ``validation_step`` / ``test_step`` return the restored batch and its per-image scores for callbacks.
    ``cuda_graph``: the training step's forward, loss and backward run as one replayed CUDA graph after
    ``cuda_graph_warmup`` eager steps (:class:`ratlit.cuda_graph.GraphedBackward`; one GPU, fp32 or bf16; the
    optimiser then steps as usual). Without CUDA the step runs eagerly, with a warning.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] = default_optimizer,
        scheduler: Callable[..., Any] | None = default_scheduler,
        data_range: float = 1.0,
        compile: bool = False,
        cuda_graph: bool = False,
        cuda_graph_warmup: int = 3,
    ) -> None:
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.data_range = data_range
        self.metrics = nn.ModuleDict({f"{stage}_{name}": CatMetric() for stage in ("val", "test") for name in SCORES})
        # torch.compile of the network's repeated blocks, used by the training step only: validation and test
        # run whole images of several sizes, which would recompile, so they run eagerly (README, "Compiled training").
        self.compile_net = compile  # not `self.compile`: that is nn.Module.compile
        self.compiled_blocks: list[str] = []
        self._finite = DeferredFiniteCheck()
        if cuda_graph_warmup < 2:
            raise ValueError(f"cuda_graph_warmup must be >= 2 (compilation, then a check for host syncs), got {cuda_graph_warmup}")
        self.cuda_graph, self.cuda_graph_warmup = cuda_graph, cuda_graph_warmup
        self._graphed: GraphedBackward | None = None
        # The graph replays forward and backward; the optimiser (and the scheduler) are stepped here.
        self.automatic_optimization = not cuda_graph

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.net(lq, regions)

    def configure_model(self) -> None:
        if self.compile_net and not self.compiled_blocks:
            # In place: same parameters, same checkpoint keys.
            self.compiled_blocks = compile_repeated_blocks(self.net)
            log.info("compiled training: %d blocks (%s)", len(self.compiled_blocks), ", ".join(sorted(set(self.compiled_blocks))))

    def on_fit_start(self) -> None:
        if not self.cuda_graph:
            return
        if self.trainer.world_size > 1:
            raise ValueError("model.cuda_graph=true trains on one GPU (the graph cannot hold DDP's gradient "
                             f"all-reduce); this run has {self.trainer.world_size} processes: set model.cuda_graph=false")
        if str(self.trainer.precision).startswith("16"):
            raise ValueError("model.cuda_graph=true needs trainer.precision 32-true or bf16-mixed: float16's loss "
                             f"scaler waits for the GPU each step; got {self.trainer.precision}")
        if self.device.type != "cuda":
            warnings.warn(f"model.cuda_graph=true: no CUDA device (training on {self.device.type}), so the training "
                          "step runs eagerly")

    def step_loss(self, lq: Tensor, hq: Tensor, regions: Tensor | None = None) -> Tensor:
        """The training loss of one batch. No host sync for NaN / inf inside: the training step checks lq, hq
        and the loss once, without waiting, and a bad value stops the run at the next step, naming it."""
        with finite_checks(False):
            return self.loss(self.net(lq, regions), hq, regions)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        lq, hq, regions = batch["lq"], batch["hq"], batch["regions"]
        step = self.global_step
        if self.cuda_graph:
            loss = self._graphed_step(lq, hq, regions)
        else:
            loss = self.step_loss(lq, hq, regions)
        self._finite.update(step, lq=lq, hq=hq, loss=loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=lq.shape[0])
        return loss

    def _graphed_step(self, lq: Tensor, hq: Tensor, regions: Tensor | None) -> Tensor:
        if self._graphed is None:
            self._graphed = GraphedBackward(self.step_loss, list(self.parameters()), warmup=self.cuda_graph_warmup)
        inputs = {"lq": lq, "hq": hq, **({"regions": regions} if regions is not None else {})}
        loss = self._graphed(**inputs)
        self.optimizers().step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return loss

    def on_train_end(self) -> None:
        self._finite.flush()

    def _evaluate(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        with eager():  # whole images of any size: never compiled (no recompiles)
            pred = self(batch["lq"], batch["regions"])
        hq = batch["hq"].float()
        psnr, ssim = image_metrics(pred.float(), hq, self.data_range)
        input_psnr, input_ssim = image_metrics(batch["lq"].float(), hq, self.data_range)
        scores = {"psnr": psnr, "ssim": ssim, "input_psnr": input_psnr, "input_ssim": input_ssim}
        for name, values in scores.items():
            self.metrics[f"{stage}_{name}"].update(values)
        self.log(f"{stage}/loss", self.loss(pred, batch["hq"], batch["regions"]), batch_size=pred.shape[0], sync_dist=True)
        return {"pred": pred, "name": list(batch.get("name", [])), **scores}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "test")

    def _log_summary(self, stage: str) -> None:
        """``<stage>/<score>`` (mean over all images of all ranks) and ``<stage>/<score>_std``."""
        for name in SCORES:
            metric = self.metrics[f"{stage}_{name}"]
            if not metric.update_called:
                continue
            values = metric.compute().float().reshape(-1)  # gathered over all ranks
            metric.reset()
            std = values.std(unbiased=False).item() if values.numel() > 1 else 0.0
            self.log(f"{stage}/{name}", values.mean().item(), prog_bar=f"{stage}/{name}" in ("val/psnr", "val/ssim"),
                     rank_zero_only=False)
            self.log(f"{stage}/{name}_std", std, rank_zero_only=False)

    def on_validation_epoch_end(self) -> None:
        self._log_summary("val")

    def on_test_epoch_end(self) -> None:
        self._log_summary("test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.scheduler_factory
        if scheduler is None:
            return {"optimizer": optimizer}
        keywords = scheduler.keywords if isinstance(scheduler, functools.partial) else {}
        length = {}
        for name in ("T_max", "total_steps", "total_iters"):
            if _accepts(scheduler, name) and keywords.get(name) is None:
                length[name] = self._total_steps()
                break
        scheduler = scheduler(optimizer, **length)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int:
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        return max(int(total if total is not None else self.trainer.estimated_stepping_batches), 1)


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    import inspect

    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
