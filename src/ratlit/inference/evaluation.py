"""Evaluating a checkpoint on a split, the pipeline of ``python -m ratlit.evaluate``.

Scores PSNR and SSIM (mean ± std over images, as the paper's tables) beside the input's own scores (LQ
against HQ on the same images) and the gain, and writes ``eval_<split>.md``,
``eval_<split>.csv`` (per image) and ``eval_<split>.json`` next to the run (or to ``out=``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from ratlit.data.splits import check_not_seen, saved_splits
from ratlit.models.tiling import Tiling, keeps_freed_memory
from ratlit.training.callbacks import PerImageScores, per_image_csv
from ratlit.training.run_folder import absolute_data_paths
from ratlit.training.run_loading import build_module, checkpoint_file, load_checkpoint
from ratlit.utils.allocator import keep_freed_memory
from ratlit.utils.config import instantiate, user_path
from ratlit.utils.errors import InputError
from ratlit.utils.files import check_writable, write_text_atomic
from ratlit.utils.tables import markdown_table
from ratlit.utils.trusted_targets import CONFIG_KEY, trusted_entries

log = logging.getLogger("ratlit.evaluate")


def evaluate_checkpoint(cfg: DictConfig) -> tuple[dict, str, Path]:
    """Test ``cfg.ckpt`` (a checkpoint or a run folder) on ``cfg.split`` and write ``eval_<split>.{md,csv,json}``
    into ``cfg.out`` (default: the run's ``eval/``). Returns the scores, the markdown table and that folder."""
    if cfg.split not in ("test", "val"):
        raise InputError(f"split must be test or val, got {cfg.split!r}")
    tiling = Tiling.from_config(cfg.max_tile, cfg.tile_overlap)
    ckpt = checkpoint_file(user_path(cfg.ckpt))  # a run folder: its best checkpoint
    run_cfg, state = load_checkpoint(ckpt, trusted_entries(cfg.get(CONFIG_KEY)))
    if keeps_freed_memory(tiling, run_cfg.model.net.get("region_impl")):
        keep_freed_memory()
    out = user_path(cfg.out) if cfg.out else ckpt.parent.parent / "eval"
    check_writable(out, "eval folder (out=)")  # before the test pass, not after it
    datamodule = split_checked_datamodule(run_cfg, cfg, str(ckpt))
    module = build_module(run_cfg, state)
    module.tiling = tiling
    per_image = PerImageScores()
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
                        default_root_dir=str(Path.cwd()), callbacks=[per_image])
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    trainer.test(module, dataloaders=loader, verbose=False)
    summary = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    out.mkdir(parents=True, exist_ok=True)
    row = {
        "checkpoint": ckpt.name,
        "task": str(run_cfg.task_name),
        "split": cfg.split,
        "images": str(len(per_image.rows)),
        "PSNR": f"{summary['psnr']:.4f} ± {summary['psnr_std']:.4f}",
        "input PSNR": f"{summary['input_psnr']:.4f} ± {summary['input_psnr_std']:.4f}",
        "PSNR gain": f"{summary['psnr'] - summary['input_psnr']:+.4f}",
        "SSIM": f"{summary['ssim']:.4f} ± {summary['ssim_std']:.4f}",
        "input SSIM": f"{summary['input_ssim']:.4f} ± {summary['input_ssim_std']:.4f}",
        "SSIM gain": f"{summary['ssim'] - summary['input_ssim']:+.4f}",
    }
    table = markdown_table(list(row), [list(row.values())])
    write_text_atomic(out / f"eval_{cfg.split}.md", table)
    write_text_atomic(out / f"eval_{cfg.split}.csv", per_image_csv(per_image.rows))
    result = {"checkpoint": str(ckpt), "split": cfg.split, "data": OmegaConf.to_container(run_cfg.data), **summary,
              "input": {k[len("input_"):]: v for k, v in summary.items() if k.startswith("input_")},
              "gain": {"psnr": summary["psnr"] - summary["input_psnr"],
                       "ssim": summary["ssim"] - summary["input_ssim"]}}
    write_text_atomic(out / f"eval_{cfg.split}.json", json.dumps(result, indent=2, default=str))
    return result, table, out


def split_checked_datamodule(run_cfg: DictConfig, cfg: DictConfig, run: str) -> L.LightningDataModule:
    """The run's DataModule with this call's ``data.*`` overrides, whose ``cfg.split`` holds no group the
    run trained on (or, for test, selected its checkpoint on) unless ``allow_train_overlap``.

    Same data: the run's recorded split; groups added to the folder since are left out (named), or tested
    with ``include_new_groups``. Other data (``data.root`` or ``data.splits`` given): that data's own split
    (the given one, its splits.json, or the seeded split), checked against the run's."""
    saved = saved_splits(run_cfg)
    given = OmegaConf.to_container(cfg.data) if cfg.get("data") is not None else {}
    other_data = "root" in given or "splits" in given
    with open_dict(run_cfg):
        if other_data and "splits" not in given:
            run_cfg.data.splits = None  # the run's split names the run's groups, not the other data's
        for key, value in given.items():
            run_cfg.data[key] = value
        absolute_data_paths(run_cfg.data)
    datamodule = instantiate(run_cfg.data)
    if saved is None:
        log.warning("%s records no split (made before splits were saved): cannot check that the %s groups "
                    "were not used for training", run, cfg.split)
        return datamodule
    if not other_data:
        known = {g for groups in saved.values() for g in groups}
        new = sorted({s.group for s in datamodule.samples()} - known)
        if new and cfg.get("include_new_groups"):
            log.warning("testing also %d group(s) added to the data after the run: %s", len(new), new)
            datamodule.splits_source = {**saved, "test": saved["test"] + new}
        elif new:
            log.warning("%d group(s) in the data are not in the run's split and are left out: %s "
                        "(include_new_groups=true tests them too)", len(new), new)
    groups = sorted({s.group for s in datamodule.split_samples(cfg.split)})
    if not cfg.get("allow_train_overlap"):
        check_not_seen(saved, cfg.split, groups, run)
    return datamodule
