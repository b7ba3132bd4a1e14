"""Restore scans: ``python -m ratlit.predict ckpt=<ckpt> input=<file or folder> output=<folder>``.

The pipeline (what is read, how values map, what is written) is :mod:`ratlit.inference.restore`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ratlit.cli.command import exit_on_user_error, hydra_command
from ratlit.inference.restore import restore_paths
from ratlit.models.tiling import Tiling
from ratlit.utils.config import user_path
from ratlit.utils.errors import InputError
from ratlit.utils.trusted_targets import CONFIG_KEY, trusted_entries

USAGE = "python -m ratlit.predict ckpt=<checkpoint .ckpt> input=<file or folder> output=<folder>"


@exit_on_user_error
def predict(cfg: DictConfig) -> list[Path]:
    missing = [key for key in ("ckpt", "input", "output") if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise InputError(f"predict needs {', '.join(f'{k}=' for k in missing)}: {USAGE}")
    tiling = Tiling.from_config(cfg.max_tile, cfg.tile_overlap)
    out = user_path(cfg.output)
    written = restore_paths(
        user_path(cfg.ckpt),
        user_path(cfg.input),
        out,
        accelerator=str(cfg.accelerator),
        cache_dir=None if cfg.cache_dir is None else user_path(cfg.cache_dir),
        slice_axis=cfg.slice_axis,
        upscale=bool(cfg.upscale),
        nonnegative=cfg.nonnegative,
        force=cfg.force,
        tiling=tiling,
        assume_hu=cfg.get("assume_hu"),
        trusted=trusted_entries(cfg.get(CONFIG_KEY)),
        regions=None if cfg.get("regions") is None else user_path(cfg.regions),
        region_reference=cfg.get("region_reference", "train"),
    )
    print(f"restored {len(written)} file(s) into {out}")
    return written


main = hydra_command("predict", predict, keep_memory=False)  # set once tiling is known

if __name__ == "__main__":
    main()
