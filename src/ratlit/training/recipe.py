"""The training recipe behind ``python -m ratlit.train`` (:mod:`ratlit.cli.train`): one run trained and tested
in its folder (:func:`run_training`), and one job of a sweep that records its own failure (:func:`sweep_job`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from ratlit.data.splits import groups_by_split
from ratlit.training.callbacks import RunConfigInCheckpoint
from ratlit.training.checkpoint_saving import AtomicCheckpointIO, resume_checkpoint
from ratlit.training.launch import check_launch, pin_parallel_job, set_matmul_precision
from ratlit.training.loggers import (
    MetricsFromRestoredStep,
    build_loggers,
    comparison_columns,
    finish_wandb,
    run_name,
    run_tags,
    swept_values,
    wandb_id,
)
from ratlit.training.preemption import StopOnSignals, exit_after_signal, requeued_checkpoint, slurm_environment
from ratlit.training.preflight import preflight
from ratlit.training.rank_watch import RankWatch
from ratlit.training.results import (
    fit_results,
    loss_name,
    model_name,
    scores_after_test,
    summary_line,
    test_image_counts,
    write_results,
)
from ratlit.training.run_claim import claim_folder
from ratlit.training.run_folder import (
    RelocateCheckpointState,
    RunConfigFiles,
    RunHistory,
    absolute_data_paths,
    original_overrides,
    resumed_config,
)
from ratlit.training.sweep_jobs import RunProgress, record_failure
from ratlit.utils.config import USER_ERRORS, instantiate, overrides
from ratlit.utils.stopping import stop_on_signals
from ratlit.utils.trusted_targets import CONFIG_KEY, check_targets, trusted_entries

log = logging.getLogger("ratlit.train")


def run_training(cfg: DictConfig, progress: RunProgress | None = None) -> dict[str, Any]:
    """Train and test one run in ``cfg.run_dir`` (claimed by this process: conf/train.yaml's Hydra callback for a
    run, :func:`sweep_job` for a sweep's job); ``progress`` follows its phase and step."""
    check_launch(cfg)
    pin_parallel_job(cfg)  # before anything starts CUDA
    set_matmul_precision(cfg)
    ckpt_path, made_in = None, None
    if cfg.get("resume"):
        cfg, ckpt_path, made_in = resumed_config(cfg)  # its files checked against what this call trusts
        ckpt_path = str(resume_checkpoint(Path(ckpt_path)))  # never a truncated last.ckpt
    else:
        # Every `_target_` of the run, before anything is built or written: a mistyped or untrusted name is one line.
        check_targets(cfg, "the run config", trusted_entries(cfg.get(CONFIG_KEY)))
        if (requeued := requeued_checkpoint(cfg)) is not None:  # a requeued SLURM job: the same job, continued
            ckpt_path = str(requeued)
    if rank_zero_only.rank == 0:
        preflight(cfg)  # on a CPU: before anything is built, refuse a run that would not fit or not end in a day
    run_dir = Path(str(cfg.run_dir))
    if rank_zero_only.rank == 0:
        log.info("run folder: %s", run_dir)  # known now: a long run can be followed (and resumed) from the start
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    absolute_data_paths(cfg.data)
    wandb_id(cfg)

    with stop_on_signals():  # a stop while the data is built or listed ends its workers and temporary folders
        datamodule, module, splits = _prepare(cfg)
    partition = datamodule.partitioner.spec
    log.info("partitioner: %s", partition)
    with open_dict(cfg):
        cfg.data.splits = splits  # the run config (and so every checkpoint) records the split it used
        cfg.partition_used = partition
        # predict scales the region count of larger (or smaller) images from it (ratlit.partition.density)
        shape = datamodule.train_image_shape()
        cfg.train_image_shape = None if shape is None else list(shape)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_config = OmegaConf.to_yaml(resolved)
    # A new run's config.yaml (what marks the folder as used) waits for its first optimiser step: a run that fails
    # before it can be started again in the same folder. A continued run's is written now.
    config_files = RunConfigFiles(run_dir, run_config, splits)
    if ckpt_path is not None and rank_zero_only.rank == 0:
        config_files.write()

    saved_mode = os.environ.get("WANDB_MODE")
    columns = comparison_columns(str(cfg.task_name), model_name(cfg), cfg.model.net.get("attention"),
                                 loss_name(cfg), str(partition["name"]), cfg.get("seed"),
                                 swept_values(cfg) if not ckpt_path else None)
    # W&B: the comparison columns at the top level, the whole config below them under `cfg`.
    loggers = build_loggers(cfg, run_tags(cfg, partition), {**columns, "cfg": resolved})
    try:
        for lg in loggers:
            if not isinstance(lg, WandbLogger):
                lg.log_hyperparams(resolved)
        callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
        if made_in is not None and Path(made_in).resolve() != run_dir.resolve():
            callbacks.append(RelocateCheckpointState(made_in, str(run_dir)))
        # Checkpoints written whole beside their target (Lightning's default goes through the system temp folder).
        plugins = [*(instantiate(p) for p in cfg.trainer.get("plugins") or []), AtomicCheckpointIO()]
        stop = StopOnSignals(slurm_environment(plugins))
        callbacks += [RunConfigInCheckpoint(run_config), MetricsFromRestoredStep(), stop,
                      RankWatch(run_dir=str(run_dir)), config_files, progress or RunProgress()]
        name = OmegaConf.select(cfg, "logger.wandb.name", default=None) or run_name(cfg)
        callbacks.append(RunHistory(original_overrides(run_dir) if ckpt_path else overrides(), name,
                                    resume=overrides() if ckpt_path else None))
        trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, plugins=plugins)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            results = fit_results(cfg, trainer, partition, columns)
            if cfg.get("test_after_fit", True):
                trainer.test(module, datamodule=datamodule, ckpt_path=results["best_checkpoint"], weights_only=True)
                results.update(scores_after_test(trainer))
                results["test_images"] = test_image_counts(trainer, datamodule)
        except SIGTERMException:  # SIGTERM, SIGINT or SLURM's warning: last.ckpt holds this step
            exit_after_signal(trainer, stop, run_dir)
        if trainer.is_global_zero:
            write_results(run_dir, results)
            print(summary_line(cfg, results))
        return results
    finally:
        finish_wandb(loggers, saved_mode)


def _prepare(cfg: DictConfig) -> tuple[Any, Any, dict[str, list[str]]]:
    """The DataModule, the LightningModule and the split (the embedded set built if needed, the data listed)."""
    datamodule = instantiate(cfg.data)
    # Before the data is listed (and an embedded set built, or a user's folder read): a mistyped model, loss or
    # optimiser value fails in seconds.
    module = instantiate(cfg.model)
    return datamodule, module, groups_by_split(datamodule)


def sweep_job(cfg: DictConfig) -> dict[str, Any] | None:
    """One job of a multirun: its folder claimed, and any error recorded there (``results.json`` with status
    ``failed``, the error line, phase and step) instead of ending the sweep; the sweep names it at its end."""
    run_dir = Path(str(cfg.run_dir))
    lead = rank_zero_only.rank == 0
    try:
        claim = claim_folder(run_dir) if lead else None
    except USER_ERRORS as err:  # another process holds the folder: nothing is written there
        log.error("%s", err)
        return None
    progress = RunProgress()
    try:
        return run_training(cfg, progress)
    except Exception as err:
        if isinstance(err, USER_ERRORS):
            log.error("%s", err)
        else:  # a bug in ratlit: its traceback in the job's log
            log.exception("job %s failed", HydraConfig.get().job.num)
        if lead:
            about = {"task": cfg.get("task_name"), "overrides": overrides(), "name": _name(cfg),
                     "sweep_name": cfg.get("sweep_name"), "run_dir": str(run_dir), "job": HydraConfig.get().job.num}
            record_failure(run_dir, err, progress, about)
        return None
    finally:
        if claim is not None:
            claim.release()


def _name(cfg: DictConfig) -> str | None:
    try:
        return run_name(cfg)
    except Exception:  # the name of a job whose config is broken: its overrides say enough
        return None
