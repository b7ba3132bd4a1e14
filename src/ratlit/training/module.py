"""The LightningModule: a restoration network, its loss, an optimiser and scheduler, PSNR / SSIM per image.

Reporting (panels, the per-image table, the best validation score, W&B) lives in ``ratlit.training.callbacks``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ratlit.models.tiling import Tiling, tile_multiple, tiled_forward
from ratlit.training.compiling import compile_choice, compile_repeated_blocks, compiles_on, eager
from ratlit.training.cuda_graph import GraphedBackward
from ratlit.utils.checks import DeferredFiniteCheck, finite_checks
from ratlit.utils.config import CONF_DIR, instantiate
from ratlit.utils.errors import InputError

log = logging.getLogger(__name__)

# Scores kept per image: of the restored image, and of the input (LQ) itself against the same HQ.
SCORES = ("psnr", "ssim", "input_psnr", "input_ssim")
CUDA_GRAPH_CHOICES = (True, False, "auto")


def image_metrics(pred: Tensor, target: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Per-image PSNR and SSIM ``[B]`` on the task's intensity range."""
    dims = tuple(range(1, pred.ndim))
    psnr = peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=dims)
    ssim = structural_similarity_index_measure(pred, target, data_range=data_range, reduction="none")
    return psnr.reshape(-1), ssim.reshape(-1)


def default_optimization(node: str) -> Callable[..., Any]:
    """``optimizer`` or ``scheduler`` partial of conf/optimizer/adam.yaml (the public code's Adam, cosine to 1e-6):
    the defaults are written in that one file, for the configs and for modules built in code alike."""
    return instantiate(OmegaConf.load(CONF_DIR / "optimizer" / "adam.yaml")[node])


class RestorationModule(L.LightningModule):
    """Trains ``net(lq, regions)`` with ``loss(pred, hq, regions)``; logs PSNR / SSIM mean and std, and the
    input's own scores (``input_psnr``, ``input_ssim``: LQ against HQ on the same images).

    ``optimizer`` is a partial taking the parameters, ``scheduler`` a partial taking the optimiser (stepped
    every step; None keeps the learning rate constant; both default to conf/optimizer/adam.yaml's); a scheduler
    with a length argument (``T_max``, ``total_steps``) left unset gets the trainer's
    ``max_steps``, so a resumed run that trains longer stretches it. Validation and test run on whole images;
    ``validation_step`` / ``test_step`` return the restored batch and its per-image scores for callbacks.
    ``compile``: compile the network's repeated blocks for the training step: True, False, or ``"auto"``
    (compiled where the run trains on CUDA, eager on the CPU; the configs' default, conf/train.yaml); the first
    compiled step's time (mostly compilation) is logged after it.
    ``compile_memory_budget`` (with ``compile``): the fraction of the compiled blocks' activations that backward
    keeps (torch's ``activation_memory_budget``); below 1 the rest is recomputed (what it saves:
    docs/performance.md). ``cuda_graph``: the training step's forward, loss and backward replayed
    as one CUDA graph after ``cuda_graph_warmup`` eager steps (:class:`ratlit.training.cuda_graph.GraphedBackward`);
    ``"auto"`` wherever it can be (one CUDA device, fp32 or bf16, no gradient accumulation), ``True`` insists
    (an error where it cannot be, eager with a warning on the CPU), ``False`` never.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None | str = "default",
        data_range: float = 1.0,
        compile: bool | str = False,
        compile_memory_budget: float = 1.0,
        cuda_graph: bool | str = "auto",
        cuda_graph_warmup: int = 3,
    ) -> None:
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_factory = optimizer or default_optimization("optimizer")
        self.scheduler_factory = default_optimization("scheduler") if scheduler == "default" else scheduler
        self.data_range = data_range
        self.metrics = nn.ModuleDict({f"{stage}_{name}": CatMetric() for stage in ("val", "test")
                                      for name in (*SCORES, "index")})
        # torch.compile of the network's repeated blocks, used by the training step only: validation and test
        # run whole images of several sizes, which would recompile, so they run eagerly (docs/gpu.md, "Compiled
        # training").
        self.compile_net = compile_choice(compile)  # not `self.compile`: that is nn.Module.compile
        if not 0 < compile_memory_budget <= 1:
            raise InputError(f"compile_memory_budget must be in (0, 1], got {compile_memory_budget}")
        self.compile_memory_budget = compile_memory_budget
        self.compiled_blocks: list[str] = []
        self._first_step_start: float | None = None  # set while the first compiled training step runs
        self._first_step_logged = False
        self._finite = DeferredFiniteCheck()
        if cuda_graph not in CUDA_GRAPH_CHOICES:
            raise InputError(f"cuda_graph must be one of {CUDA_GRAPH_CHOICES}, got {cuda_graph!r}")
        cuda_graph = cuda_graph if cuda_graph == "auto" else bool(cuda_graph)
        if cuda_graph_warmup < 2:
            raise InputError("cuda_graph_warmup must be >= 2 (compilation, then a check for host syncs), "
                             f"got {cuda_graph_warmup}")
        self.cuda_graph, self.cuda_graph_warmup = cuda_graph, cuda_graph_warmup
        self._configured_lrs: list[float] = []  # set by configure_optimizers
        self._graphed: GraphedBackward | None = None  # set at fit start where the step is replayed as a CUDA graph
        self.tiling: Tiling | None = None  # test images in tiles (set by evaluate; ratlit.models.tiling)

    def forward(self, lq: Tensor, regions: Tensor | None = None) -> Tensor:
        return self.net(lq, regions)

    def configure_model(self) -> None:
        # Called before the strategy moves the module: the trainer's device decides `auto`.
        try:
            device = self.trainer.strategy.root_device
        except RuntimeError:  # not attached to a Trainer: the module's own device
            device = self.device
        if compiles_on(self.compile_net, device) and not self.compiled_blocks:
            # In place: same parameters, same checkpoint keys.
            self.compiled_blocks = compile_repeated_blocks(self.net)
            log.info("compiled training: %d blocks (%s)", len(self.compiled_blocks),
                     ", ".join(sorted(set(self.compiled_blocks))))

    def cuda_graph_blockers(self) -> list[str]:
        """Why this fit's training step cannot be replayed as a CUDA graph on a GPU (empty: it can)."""
        trainer = self.trainer
        blockers = []
        if trainer.world_size > 1:
            blockers.append(f"it runs {trainer.world_size} processes (the graph cannot hold DDP's gradient "
                            "all-reduce)")
        if str(trainer.precision).startswith("16"):
            blockers.append(f"precision {trainer.precision}: float16's loss scaler waits for the GPU each step")
        if trainer.accumulate_grad_batches != 1:
            blockers.append(f"accumulate_grad_batches={trainer.accumulate_grad_batches} (each replay writes the "
                            "gradients, it does not add to them)")
        return blockers

    def on_fit_start(self) -> None:
        self._graphed = None
        if self.cuda_graph is False:
            return
        blockers = self.cuda_graph_blockers()
        on_cuda = self.device.type == "cuda"
        if self.cuda_graph is True:
            if blockers:
                raise InputError(f"model.cuda_graph=true cannot be used here: {'; '.join(blockers)}. "
                                 "Set model.cuda_graph=false (or auto)")
            if not on_cuda:  # same step, same results, eagerly
                warnings.warn(f"model.cuda_graph=true: this run trains on {self.device.type}, not CUDA, so the "
                              "training step runs eagerly", stacklevel=2)
        elif blockers or not on_cuda:  # auto
            if on_cuda:
                log.info("training step without a CUDA graph: %s", "; ".join(blockers))
            return
        self._graphed = GraphedBackward(self.step_loss, list(self.parameters()), warmup=self.cuda_graph_warmup)

    def on_train_start(self) -> None:
        if self.scheduler_factory is None and self.trainer.optimizers:
            # Constant rate: a resumed run uses the rate configured now (model.optimizer.lr=... on resume), not
            # the one its checkpoint's optimiser state brought back. A scheduler sets its own (CosineToEnd).
            for group, lr in zip(self.trainer.optimizers[0].param_groups, self._configured_lrs, strict=True):
                group["lr"] = lr

    def step_loss(self, lq: Tensor, hq: Tensor, regions: Tensor | None = None) -> Tensor:
        """The training loss of one batch. No host sync for NaN / inf inside: the training step checks lq, hq
        and the loss once, without waiting, and a bad value stops the run at the next step, naming it."""
        budget = contextlib.nullcontext()
        if self.compiled_blocks and self.compile_memory_budget < 1:
            # Read when the compiled blocks are traced (in this forward): what their backward keeps and recomputes.
            budget = torch._functorch.config.patch(activation_memory_budget=self.compile_memory_budget)
        with finite_checks(False), budget:
            return self.loss(self.net(lq, regions), hq, regions)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        lq, hq, regions = batch["lq"], batch["hq"], batch["regions"]
        if self._graphed is not None:
            # Forward, loss and backward: the gradients are in .grad when this returns (see backward below).
            loss = self._graphed(**{"lq": lq, "hq": hq, **({"regions": regions} if regions is not None else {})})
        else:
            loss = self.step_loss(lq, hq, regions)
        self._finite.update(self.global_step + 1, lq=lq, hq=hq, loss=loss)  # the N-th step, as checkpoints count
        self.log("train/loss", loss, prog_bar=True, batch_size=lq.shape[0])
        return loss

    # With a CUDA graph the training step has already run backward, and its gradients are the graph's own
    # tensors, written by every replay: Lightning's backward and zero_grad must leave them alone. Clipping, the
    # optimiser step, the scheduler and the step count stay Lightning's.
    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        if self._graphed is None:
            super().backward(loss, *args, **kwargs)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self._graphed is None:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.compiled_blocks and not self._first_step_logged:
            self._first_step_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._first_step_start is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once: the step's own time, not its launch
        log.info("first training step with compiled blocks: %.1f s (compilation included; later steps reuse it)",
                 time.perf_counter() - self._first_step_start)
        self._first_step_start, self._first_step_logged = None, True

    def on_train_end(self) -> None:
        self._finite.flush()

    def on_validation_start(self) -> None:
        self._finite.flush()  # a training step's NaN is named as such, not as the validation's that follows it

    def _evaluate(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        with eager():  # whole images of any size: never compiled (no recompiles)
            if stage == "test" and self.tiling is not None:  # evaluate's max_tile: whole-image regions, cut
                pred = tiled_forward(self, batch["lq"], batch["regions"], self.tiling, tile_multiple(self.net))
            else:
                pred = self(batch["lq"], batch["regions"])
        if not torch.isfinite(pred).all():  # a diverged model: say where, before a loss or metric trips on it
            where = f"validation at step {self.global_step}" if stage == "val" else stage
            error = InputError(f"{where}: the restored image (pred) contains NaN or infinite values: the model "
                               "diverged (a lower model.optimizer.lr, or trainer.gradient_clip_val, may help)")
            error.phase = "validation" if stage == "val" else stage  # type: ignore[attr-defined]  # a sweep's record
            error.step = self.global_step  # type: ignore[attr-defined]
            raise error
        hq = batch["hq"].float()
        psnr, ssim = image_metrics(pred.float(), hq, self.data_range)
        input_psnr, input_ssim = image_metrics(batch["lq"].float(), hq, self.data_range)
        scores = {"psnr": psnr, "ssim": ssim, "input_psnr": input_psnr, "input_ssim": input_ssim}
        for name, values in scores.items():
            self.metrics[f"{stage}_{name}"].update(values)
        index = batch.get("index")
        if index is not None:  # DDP's sampler pads the last share with repeated images: counted once below
            self.metrics[f"{stage}_index"].update(index.float())
        self.log(f"{stage}/loss", self.loss(pred, batch["hq"], batch["regions"]), batch_size=pred.shape[0],
                 sync_dist=True)
        return {"pred": pred, "name": list(batch.get("name", [])), "group": list(batch.get("group", [])),
                "index": index, **scores}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "test")

    def _log_summary(self, stage: str) -> None:
        """``<stage>/<score>`` (mean over all images of all ranks, each image once) and ``<stage>/<score>_std``."""
        index = self.metrics[f"{stage}_index"]
        once = first_of_each(index.compute().reshape(-1)) if index.update_called else None  # gathered over ranks
        index.reset()
        for name in SCORES:
            metric = self.metrics[f"{stage}_{name}"]
            if not metric.update_called:
                continue
            values = metric.compute().float().reshape(-1)  # gathered over all ranks
            metric.reset()
            if once is not None and once.numel() == values.numel():
                values = values[once]
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
        # The configured rates, before a checkpoint's optimiser state replaces them (applied in on_train_start).
        self._configured_lrs = [group["lr"] for group in optimizer.param_groups]
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


def first_of_each(index: Tensor) -> Tensor:
    """Boolean mask ``[N]`` of the first occurrence of each value of ``index`` ``[N]``."""
    _, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.full((int(inverse.max()) + 1,), index.numel(), device=index.device, dtype=positions.dtype)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first[inverse] == positions


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    import inspect

    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
