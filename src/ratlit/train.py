"""Train (and test) a restoration model: ``python -m ratlit.train task=pet attention=rmsa``.

Sweeps: ``python -m ratlit.train -m task=ct attention=msa,wmsa,rmsa loss=l1,fr sweep_name=table4_ct``.
Resume an interrupted run: ``python -m ratlit.train resume=<run folder>``.
Each run folder holds ``config.yaml`` (the full resolved config, with the partitioner actually used and
the split in ``data.splits``), ``splits.json``, ``checkpoints/`` (best by validation PSNR, and last),
``csv/metrics.csv``, ``panels/``, ``results.json`` (test scores beside the input's own) and
``test_results.csv`` (per image, restored and input).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ratlit.allocator import keep_freed_memory
from ratlit.callbacks import (BestValidation, RunConfigInCheckpoint, TrainingSpeed, comparison_columns, find_callback,
                              quiet_unactionable_messages)
from ratlit.config import CONF_DIR, exit_on_user_error, instantiate, prepare_argv
from ratlit.data.splits import groups_by_split, write_splits
from ratlit.files import write_text_atomic
from ratlit.launch import pin_parallel_job
from ratlit.runs import AppendingCSVLogger, RelocateCheckpointState, absolute_data_paths, relocate, wandb_id

log = logging.getLogger("ratlit.train")
_ABSENT = object()


def is_multi_process(trainer_cfg: DictConfig) -> bool:
    """Whether the trainer config starts more than one process (several devices or nodes)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, ListConfig)):
        many = len(devices) > 1
    elif devices in ("auto", -1, "-1"):
        many = torch.cuda.device_count() > 1
    else:
        many = int(devices) > 1
    return many or int(trainer_cfg.get("num_nodes", 1) or 1) > 1


def check_launch(cfg: DictConfig) -> None:
    """Refuse DDP inside a local Hydra multirun (Lightning #15737): children would re-start the sweep."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and is_multi_process(cfg.trainer) and "submitit" not in launcher:
        raise ValueError(
            "a multirun (-m) cannot use a multi-process trainer (several devices or nodes): Lightning's DDP "
            "launcher would re-start the sweep in every child. Run the sweep one job per GPU "
            "(trainer.devices=1, jobs one after another), or as a SLURM array with hydra/launcher=slurm, "
            "where each job may use several GPUs."
        )


def refuse_used_run_dir(run_dir: Path) -> None:
    """A new run never starts in another run's folder: its last.ckpt, metrics and results would mix with this
    one's (and a later resume would continue the wrong weights)."""
    checkpoints = run_dir / "checkpoints"
    used = (run_dir / "config.yaml").exists() or (checkpoints.is_dir() and any(checkpoints.iterdir()))
    if used:
        raise ValueError(f"run folder {run_dir} already holds a run: resume={run_dir} continues it; for a new run "
                         "give another folder (hydra.run.dir=...) or remove that one")


def resumed_config(cfg: DictConfig) -> tuple[DictConfig, str, str]:
    """The saved config of the run folder ``cfg.resume`` (with this call's value overrides, and its paths
    moved into that folder), its last checkpoint, and the folder the run was made in (differs for a copy)."""
    run_dir = Path(str(cfg.resume)).expanduser()
    if not run_dir.is_absolute() and HydraConfig.initialized():
        run_dir = Path(hydra.utils.get_original_cwd()) / run_dir
    saved, last = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved.is_file():
        raise ValueError(f"resume={run_dir}: no config.yaml there; give the folder of a ratlit run")
    if not last.is_file():
        raise ValueError(f"resume={run_dir}: no checkpoints/last.ckpt to resume from")
    old = OmegaConf.load(saved)
    # Paths the saved (resolved) config holds into its own folder follow it: a copied folder resumes in
    # the copy and never writes into the original.
    made_in = str(old.get("run_dir") or run_dir)
    old = relocate(old, made_in, str(run_dir))
    with open_dict(old):
        old.run_dir = str(run_dir)
        old.resume = str(run_dir)
        # Other overrides change values of the resumed run, e.g. trainer.max_steps=400000 to train longer.
        for item in overrides():
            key, _, value = item.partition("=")
            key = key.lstrip("+~")
            if key == "resume":
                continue
            if OmegaConf.select(old, key, default=_ABSENT) is _ABSENT:
                raise ValueError(f"resume: {item!r} names no value of the saved run config; "
                                 f"only existing values (e.g. trainer.max_steps=...) can change on resume")
            OmegaConf.update(old, key, yaml.safe_load(value), merge=True)
    return old, str(last), made_in


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


def build_loggers(cfg: DictConfig, tags: list[str], config: dict[str, Any]) -> list[Logger]:
    loggers: list[Logger] = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        node = OmegaConf.to_container(node, resolve=True)
        if node["_target_"].endswith("WandbLogger"):
            if node.get("offline", "auto") == "auto":
                node["offline"] = not wandb_online()
            if node["offline"]:
                log.info("W&B logs offline in %s; upload later with `wandb sync`", node.get("save_dir"))
            node.update(tags=tags, name=run_name(cfg))
            # Called directly, not instantiated: instantiate would build every `_target_` inside the run config
            # (a second network, Trainer, datamodule) and hand W&B those objects instead of the values.
            logger_class = hydra.utils.get_class(node.pop("_target_"))
            loggers.append(logger_class(**node, config=config))
            continue
        loggers.append(instantiate(node, _convert_="all"))
    if not any(isinstance(lg, CSVLogger) for lg in loggers):
        loggers.append(AppendingCSVLogger(save_dir=str(cfg.run_dir), name="csv", version=""))
    return loggers


def run_name(cfg: DictConfig) -> str:
    """A readable name: the run's own overrides (paths left out), else its folder name."""
    parts = [o for o in overrides() if not any(k in o for k in ("root=", "dir=", "checkpoint=", "sweep_name="))]
    return (",".join(parts) or Path(str(cfg.run_dir)).name)[:128]


def finish_wandb(loggers: list[Logger], saved_mode: str | None) -> None:
    """End the W&B run and restore WANDB_MODE, so the next job of a multirun starts clean."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
    if saved_mode is None:
        os.environ.pop("WANDB_MODE", None)
    else:
        os.environ["WANDB_MODE"] = saved_mode


def run_tags(cfg: DictConfig, partition: dict[str, Any]) -> list[str]:
    loss = str(cfg.model.loss._target_).rsplit(".", 1)[-1]
    tags = [f"task:{cfg.task_name}", f"attention:{cfg.model.net.get('attention', 'none')}", f"loss:{loss}",
            f"partition:{partition['name']}"]
    return tags + [str(t) for t in cfg.get("tags") or []]


def overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2))


def test_scores(trainer: L.Trainer) -> dict[str, Any]:
    """``test``, ``input`` (LQ against HQ on the same images) and ``gain`` entries of results.json."""
    keys = ("psnr", "psnr_std", "ssim", "ssim_std")
    test = {k: metric(trainer, f"test/{k}") for k in keys}
    scores: dict[str, Any] = {"test": test}
    given = {k: metric(trainer, f"test/input_{k}") for k in keys}
    if given["psnr"] is not None:
        scores["input"] = given
        scores["gain"] = {k: test[k] - given[k] for k in ("psnr", "ssim") if test[k] is not None}
    return scores


def summary_line(cfg: DictConfig, results: dict[str, Any]) -> str:
    """One line: best validation, test mean ± std beside the input's score and the gain, where things are."""
    best_val, test = results.get("best_val") or {}, results.get("test") or {}
    given, gain = results.get("input") or {}, results.get("gain") or {}
    text = (f"[ratlit] {cfg.task_name} {results['attention']}/{results['loss']} partition={results['partition']['name']}: "
            + (f"best val PSNR {best_val['psnr']:.4f} / SSIM {best_val['ssim']:.4f} (step {best_val['step']})"
               if best_val.get("psnr") is not None else "no validation"))
    if test.get("psnr") is not None:
        text += f" | test PSNR {test['psnr']:.2f} ± {test['psnr_std']:.2f}"
        if given:
            text += f" (input {given['psnr']:.2f}, {gain['psnr']:+.2f} dB)"
        text += f", SSIM {test['ssim']:.4f} ± {test['ssim_std']:.4f}"
        if given:
            text += f" (input {given['ssim']:.4f}, {gain['ssim']:+.4f})"
    best = results.get("best_checkpoint")
    where = f"checkpoint {best}" if best else f"last checkpoint {results['last_checkpoint']}"
    return text + f" | {where} | run {results['run_dir']}"


def model_name(cfg: DictConfig) -> str:
    """The model group's choice (e.g. rat, redcnn), else the network's class name."""
    if HydraConfig.initialized() and not cfg.get("resume"):
        choice = HydraConfig.get().runtime.choices.get("model")
        if choice:
            return str(choice)
    return str(cfg.model.net._target_).rsplit(".", 1)[-1].lower()


def metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(cfg: DictConfig) -> None:
    """``float32_matmul_precision`` (TF32 on Ampere+ GPUs at ``high``), set before the trainer exists."""
    precision = str(cfg.get("float32_matmul_precision", "high"))
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"float32_matmul_precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    torch.set_float32_matmul_precision(precision)


@exit_on_user_error
def train(cfg: DictConfig) -> dict[str, Any]:
    keep_freed_memory()
    quiet_unactionable_messages()
    check_launch(cfg)
    pin_parallel_job(cfg)  # before anything starts CUDA
    set_matmul_precision(cfg)
    ckpt_path, made_in = None, None
    if cfg.get("resume"):
        cfg, ckpt_path, made_in = resumed_config(cfg)
    run_dir = Path(str(cfg.run_dir))
    if ckpt_path is None and rank_zero_only.rank == 0:  # DDP's other ranks start later, in the same folder
        refuse_used_run_dir(run_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    absolute_data_paths(cfg.data, Path(hydra.utils.get_original_cwd()) if HydraConfig.initialized() else Path.cwd())
    wandb_id(cfg)

    datamodule = instantiate(cfg.data)
    # Before the data is listed (and an embedded set built, or a user's folder read): a mistyped model, loss or
    # optimiser value fails in seconds.
    module = instantiate(cfg.model)
    splits = groups_by_split(datamodule)
    with open_dict(cfg):
        cfg.data.splits = splits  # the run config (and so every checkpoint) records the split it used
    partition = datamodule.partitioner.spec
    with open_dict(cfg):
        cfg.partition_used = partition
    log.info("partitioner: %s", partition)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_config = OmegaConf.to_yaml(resolved)
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", run_config)
        write_splits(run_dir, splits)

    saved_mode = os.environ.get("WANDB_MODE")
    columns = comparison_columns(str(cfg.task_name), model_name(cfg), cfg.model.net.get("attention"),
                                 str(cfg.model.loss._target_).rsplit(".", 1)[-1], str(partition["name"]))
    # W&B: the comparison columns at the top level, the whole config below them under `cfg`.
    loggers = build_loggers(cfg, run_tags(cfg, partition), {**columns, "cfg": resolved})
    try:
        for lg in loggers:
            if not isinstance(lg, WandbLogger):
                lg.log_hyperparams(resolved)
        callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
        if made_in is not None and Path(made_in).resolve() != run_dir.resolve():
            callbacks.append(RelocateCheckpointState(made_in, str(run_dir)))
        callbacks.append(RunConfigInCheckpoint(run_config))
        trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
        best_validation = find_callback(trainer, BestValidation)
        speed = find_callback(trainer, TrainingSpeed)
        results: dict[str, Any] = {
            "task": cfg.task_name,
            "attention": cfg.model.net.get("attention"),
            "loss": str(cfg.model.loss._target_).rsplit(".", 1)[-1],
            "partition": partition,
            "overrides": overrides(),
            "steps": trainer.global_step,
            "best_checkpoint": best,
            "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
            "best_val": dict(best_validation.best) if best_validation else {"psnr": None, "ssim": None, "step": None},
            "speed": dict(speed.speed) if speed else None,
            "columns": columns,
            "sweep_name": cfg.get("sweep_name"),
            "run_dir": str(run_dir),
        }
        if cfg.get("test_after_fit", True):
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            results.update(test_scores(trainer))
        if trainer.is_global_zero:
            write_results(run_dir, results)
            print(summary_line(cfg, results))
        return results
    finally:
        finish_wandb(loggers, saved_mode)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    results = train(cfg)
    return (results.get("test") or {}).get("psnr")


def main() -> None:
    sys.argv = prepare_argv(sys.argv)  # data.root=~/scans: Hydra's lexer rejects an unquoted ~
    _main()


if __name__ == "__main__":
    main()
