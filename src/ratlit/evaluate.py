"""Evaluate a checkpoint on a split: ``python -m ratlit.evaluate ckpt=<run>/checkpoints/best-....ckpt``.

Prints PSNR and SSIM (mean ± std over images, as the paper's tables) beside the input's own scores (LQ
against HQ on the same images) and the gain, and writes ``eval_<split>.md``,
``eval_<split>.csv`` (per image) and ``eval_<split>.json`` next to the run (or to ``out=``).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf, open_dict

from ratlit.checkpoint import build_module, load_checkpoint, resolve_path
from ratlit.config import CONF_DIR, exit_on_user_error, instantiate
from ratlit.files import write_text_atomic
from ratlit.callbacks import PerImageScores, per_image_csv, quiet_unactionable_messages


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@exit_on_user_error
def evaluate(cfg: DictConfig) -> dict:
    quiet_unactionable_messages()
    if cfg.split not in ("test", "val"):
        raise ValueError(f"split must be test or val, got {cfg.split!r}")
    ckpt = resolve_path(cfg.ckpt, Path(get_original_cwd()))
    run_cfg, state = load_checkpoint(ckpt)
    with open_dict(run_cfg):
        run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data)
    datamodule = instantiate(run_cfg.data)
    module = build_module(run_cfg, state)
    per_image = PerImageScores()
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
                        default_root_dir=str(Path.cwd()), callbacks=[per_image])
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    trainer.test(module, dataloaders=loader, verbose=False)
    summary = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    out = resolve_path(cfg.out, Path(get_original_cwd())) if cfg.out else ckpt.parent.parent / "eval"
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
    table = markdown_table([row])
    print(table, end="")
    write_text_atomic(out / f"eval_{cfg.split}.md", table)
    write_text_atomic(out / f"eval_{cfg.split}.csv", per_image_csv(per_image.rows))
    result = {"checkpoint": str(ckpt), "split": cfg.split, "data": OmegaConf.to_container(run_cfg.data), **summary,
              "input": {k[len("input_"):]: v for k, v in summary.items() if k.startswith("input_")},
              "gain": {"psnr": summary["psnr"] - summary["input_psnr"], "ssim": summary["ssim"] - summary["input_ssim"]}}
    write_text_atomic(out / f"eval_{cfg.split}.json", json.dumps(result, indent=2, default=str))
    print(f"wrote {out}/eval_{cfg.split}.{{md,csv,json}}")
    return result


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
