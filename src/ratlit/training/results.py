"""What a finished run reports: ``results.json`` (test scores beside the input's own, the best validation,
speed, where the checkpoints are) and the one-line summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from ratlit.training.callbacks import BestValidation, TrainingSpeed, find_callback
from ratlit.training.run_folder import RunHistory
from ratlit.utils.config import CONF_DIR, overrides
from ratlit.utils.files import write_text_atomic


def loss_class(cfg: DictConfig) -> str:
    return str(cfg.model.loss._target_).rsplit(".", 1)[-1]


def loss_name(cfg: DictConfig) -> str:
    """The loss as typed (``fr``, ``l1``: the Hydra choice); on resume the conf/loss file whose ``_target_`` is
    the run's loss class; else the class name."""
    if HydraConfig.initialized() and not cfg.get("resume"):
        choice = HydraConfig.get().runtime.choices.get("loss")
        if choice:
            return str(choice)
    target = str(cfg.model.loss._target_)
    named = [p.stem for p in sorted((CONF_DIR / "loss").glob("*.yaml"))
             if (OmegaConf.load(p).get("_target_") or "") == target]
    return named[0] if len(named) == 1 else loss_class(cfg)


def fit_results(cfg: DictConfig, trainer: L.Trainer, partition: dict[str, Any], columns: dict[str, str]
                ) -> dict[str, Any]:
    """``results.json`` of a fitted run, before testing."""
    run_dir = Path(str(cfg.run_dir))
    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    best_validation = find_callback(trainer, BestValidation)
    speed = find_callback(trainer, TrainingSpeed)
    history = find_callback(trainer, RunHistory)
    return {
        "status": "finished",  # a sweep's failed job writes status "failed" (ratlit.training.sweep_jobs)
        "task": cfg.task_name,
        "attention": cfg.model.net.get("attention"),
        "loss": loss_class(cfg),
        "partition": partition,
        "overrides": history.overrides if history else overrides(),  # the original run's, kept on resume
        "name": history.name if history else None,
        "resumes": history.resumes if history else [],  # each: when, from_step, overrides
        "steps": trainer.global_step,
        "best_checkpoint": (checkpoint.best_model_path or None) if checkpoint else None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "best_val": dict(best_validation.best) if best_validation else {"psnr": None, "ssim": None, "step": None},
        "speed": dict(speed.speed) if speed else None,
        "columns": columns,
        "sweep_name": cfg.get("sweep_name"),
        "run_dir": str(run_dir),
    }


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2))


def scores_after_test(trainer: L.Trainer) -> dict[str, Any]:
    """``test``, ``input`` (LQ against HQ on the same images) and ``gain`` entries of results.json."""
    keys = ("psnr", "psnr_std", "ssim", "ssim_std")
    test = {k: metric(trainer, f"test/{k}") for k in keys}
    scores: dict[str, Any] = {"test": test}
    given = {k: metric(trainer, f"test/input_{k}") for k in keys}
    if given["psnr"] is not None:
        scores["input"] = given
        scores["gain"] = {k: test[k] - given[k] for k in ("psnr", "ssim") if test[k] is not None}
    return scores


def test_image_counts(trainer: L.Trainer, datamodule: Any) -> dict[str, int]:
    """How many test images the end-of-run test scored (``trainer.limit_test_batches`` may cut the split short)
    and how many the split holds (the test loader gives one image per batch)."""
    total = len(datamodule.dataset("test"))
    scored = int(sum(min(n, total) for n in trainer.num_test_batches)) * trainer.world_size
    return {"scored": min(scored, total), "split": total}


def summary_line(cfg: DictConfig, results: dict[str, Any]) -> str:
    """One line: best validation, test mean ± std beside the input's score and the gain, where things are."""
    best_val, test = results.get("best_val") or {}, results.get("test") or {}
    given, gain = results.get("input") or {}, results.get("gain") or {}
    text = (f"[ratlit] {cfg.task_name} {results['attention']}/{results['loss']} "
            f"partition={results['partition']['name']}: "
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
    counts = results.get("test_images")
    if test.get("psnr") is not None and counts:
        text += f" on {counts['scored']} of {counts['split']} test images"
        if counts["scored"] < counts["split"]:
            ckpt = best or results["last_checkpoint"]
            text += f" (trainer.limit_test_batches; python -m ratlit.evaluate ckpt={ckpt} scores the whole split)"
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
