"""Loggers: every W&B piece in one place (online or offline, run ids that survive a resume, names, tags, the
summary a run keeps, the comparison columns, finishing a run) and a CSV logger that appends on resume (through
private members of Lightning's CSV logger, listed in tests/test_lightning_private.py)."""

from __future__ import annotations

import csv
import io
import logging
import os
import secrets
import socket
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf, open_dict

from ratlit.training.results import loss_name
from ratlit.training.run_folder import original_overrides
from ratlit.utils.config import instantiate, overrides
from ratlit.utils.files import write_text_atomic
from ratlit.utils.sweeps import parse_overrides, planned_jobs, varying_keys
from ratlit.utils.sweeps import run_name as sweep_run_name

log = logging.getLogger(__name__)


def wandb_online() -> bool:
    """Credentials present and the W&B server reachable; otherwise runs log offline."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return False
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            import netrc

            host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
            has_key = netrc.netrc().authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            has_key = False
    if not has_key:
        return False
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        return True
    except OSError:
        return False


def wandb_id(cfg: DictConfig) -> None:
    """Give the run's W&B logger a fixed run id (kept in the saved config), so a resume continues the
    same W&B run (``resume="allow"``) instead of starting another."""
    node = OmegaConf.select(cfg, "logger.wandb", default=None)
    if node is None or not str(node.get("_target_", "")).endswith("WandbLogger"):
        return
    with open_dict(node):
        if not node.get("id"):  # W&B's own form: 8 characters of [a-z0-9]
            node.id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        node.resume = "allow"
        if not node.get("name"):  # kept in the saved config too: a resumed run keeps its name
            node.name = run_name(cfg)


def build_loggers(cfg: DictConfig, tags: list[str], config: dict[str, Any]) -> list[Logger]:
    loggers: list[Logger] = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        node = OmegaConf.to_container(node, resolve=True)
        if node["_target_"].endswith("WandbLogger"):
            if node.get("offline", "auto") == "auto":
                node["offline"] = not wandb_online()
            if node["offline"]:
                log.info("W&B logs offline in %s; upload later with `wandb sync`", node.get("save_dir"))
            node.update(tags=tags, name=node.get("name") or run_name(cfg))
            # Called directly, not instantiated: instantiate would build every `_target_` inside the run config
            # (a second network, Trainer, datamodule) and hand W&B those objects instead of the values.
            logger_class = hydra.utils.get_class(node.pop("_target_"))
            loggers.append(logger_class(**node, config=config))
            continue
        loggers.append(instantiate(node, _convert_="all"))
    if not any(isinstance(lg, CSVLogger) for lg in loggers):
        loggers.append(AppendingCSVLogger(save_dir=str(cfg.run_dir), name="csv", version=""))
    return loggers


def sweep_varying_keys() -> list[str]:
    """In a multirun job: the override keys whose values differ between the sweep's jobs (from the sweep's own
    record, ``multirun.yaml``); empty elsewhere."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    jobs = planned_jobs(Path(HydraConfig.get().sweep.dir))
    return varying_keys(jobs) if jobs else []


def swept_values(cfg: DictConfig) -> dict[str, str]:
    """This sweep job's values of the keys its sweep varies (W&B config columns to compare the jobs by)."""
    keys = sweep_varying_keys()
    return {k: v for k, v in parse_overrides(overrides()).items() if k in keys} if keys else {}


def run_name(cfg: DictConfig) -> str:
    """A readable name from the run's own overrides (on resume the original run's): the keys its sweep varies
    first, then the rest, places left out; a long name ends in a hash of the whole (``ratlit.utils.sweeps``), so
    two jobs never share one. Its folder's name when there are no overrides."""
    folder = Path(str(cfg.get("run_dir") or "run"))
    given = original_overrides(folder) if cfg.get("resume") else overrides()
    return sweep_run_name(given, sweep_varying_keys()) or folder.name


def run_tags(cfg: DictConfig, partition: dict[str, Any]) -> list[str]:
    tags = [f"task:{cfg.task_name}", f"attention:{cfg.model.net.get('attention', 'none')}", f"loss:{loss_name(cfg)}",
            f"partition:{partition['name']}"]
    return tags + [str(t) for t in cfg.get("tags") or []]



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
                       seed: int | None = None, swept: dict[str, str] | None = None) -> dict[str, Any]:
    """The top-level W&B config columns that runs are grouped and compared by (``seed``: None when unseeded), and
    ``swept``: the values of the keys the run's sweep varies (e.g. ``model.optimizer.lr``), each a column."""
    columns = {"task": task, "model": model, "attention": attention or "none", "loss": loss, "partition": partition,
               "seed": None if seed is None else int(seed)}
    return {**{k: v for k, v in (swept or {}).items() if k not in columns}, **columns}


def finish_wandb(loggers: list[Logger], saved_mode: str | None) -> None:
    """End the W&B run and restore WANDB_MODE, so the next job of a multirun starts clean."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
    if saved_mode is None:
        os.environ.pop("WANDB_MODE", None)
    else:
        os.environ["WANDB_MODE"] = saved_mode


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one keeps its rows and
    appends (a new column rewrites the file with the old rows under the widened header)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._rewrite(fieldnames, self._rows())  # whole or not at all (Lightning's rewrites the file in place)

    def _rows(self) -> list[dict[str, str]]:
        with open(self.metrics_file_path, newline="") as file:
            # A None key or value: a row with too many or too few fields, e.g. one a kill cut short.
            return [row for row in csv.DictReader(file) if None not in row and None not in row.values()]

    def _rewrite(self, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames, lineterminator="\r\n")  # csv's default, as Lightning's
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(Path(self.metrics_file_path), text.getvalue())

    def keep_steps_before(self, step: int) -> int:
        """Drop the rows a resume from global step ``step`` logs again: every row past ``step``, and at ``step``
        all but the best-validation row (BestValidation logs it at the global step its checkpoint holds);
        returns how many rows went. Also drops a last row that a kill cut short."""
        self.save()  # rows this process logged so far are kept
        if not os.path.isfile(self.metrics_file_path):
            return 0
        rows = self._rows()
        kept = [row for row in rows if _logged_before(row, step)]
        with open(self.metrics_file_path, newline="") as file:
            lines = sum(1 for _ in csv.reader(file)) - 1
        if len(kept) != lines:
            self._rewrite(self.metrics_keys, kept)
        return lines - len(kept)


def _logged_before(row: dict[str, str], step: int) -> bool:
    try:
        at = int(float(row.get("step") or -1))
    except ValueError:
        return False
    if at != step:
        return at < step
    # At the step resumed from: that step's validation (its scores and best values, logged at the step, see
    # MetricsFromRestoredStep) stays; a training row there belongs to the next step, which runs again.
    return all(not value or key in ("step", "epoch") or key.startswith("val/") for key, value in row.items())


class AppendingCSVLogger(CSVLogger):
    """``lightning``'s CSVLogger whose ``metrics.csv`` survives a resume: steps 0..N stay, N..M follow (rows
    past N that the stopped run had logged go first, see :class:`MetricsFromRestoredStep`)."""

    @property
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)  # a local folder: the writer reads the file back
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class MetricsFromRestoredStep(Callback):
    """One step convention in the logs: a value is logged at the number of optimiser steps done when it was
    measured (a training loss before step N+1's update at N; a validation after N steps, its scores and best
    values, at N, the step its checkpoint is named after). At the start of training (after a checkpoint is
    restored), drops the CSV rows the run will log again, so ``metrics.csv`` never holds a step twice (a run
    killed after its last checkpoint had logged past it)."""

    def __init__(self) -> None:
        self._aligned = False
        self._logging_step: int | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning logs a validation inside step N's end at its logging step, still N - 1 then (it moves on after
        # the validation); the best-value rows and the checkpoint say N. Log the validation at N, then restore.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        loop = trainer.fit_loop.epoch_loop
        self._logging_step, loop._batches_that_stepped = loop._batches_that_stepped, trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._logging_step is not None:
            trainer.fit_loop.epoch_loop._batches_that_stepped = self._logging_step
            self._logging_step = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_validation_end(trainer, pl_module)  # stopped inside a validation: the checkpoint keeps Lightning's

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Lightning's logging step (batches that stepped) is saved one behind when a checkpoint is written inside a
        # validation at a step's end; Lightning moves it on when a resume starts at a validation interval, but not
        # after the last step's validation (ValidateAtEnd), so each such resume would log one step too early. With
        # one optimiser it equals the optimiser step: align it once, at the first batch (after Lightning's own).
        if not self._aligned and trainer.accumulate_grad_batches == 1:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
        self._aligned = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, AppendingCSVLogger):
                dropped = logger.experiment.keep_steps_before(trainer.global_step)
                if dropped:
                    log.info("metrics.csv: dropped %d rows logged after step %d, the checkpoint resumed",
                             dropped, trainer.global_step)
