"""Train (and test) a restoration model: ``python -m ratlit.train task=pet attention=rmsa``.

Sweeps: ``python -m ratlit.train -m task=ct attention=msa,wmsa,rmsa loss=l1,fr sweep_name=table4_ct``.
Resume an interrupted run: ``python -m ratlit.train resume=<run folder>``.
Each run folder holds ``config.yaml`` (the full resolved config, with the partitioner actually used and
the split in ``data.splits``), ``splits.json``, ``checkpoints/`` (best by validation PSNR, and last),
``csv/metrics.csv``, ``panels/``, ``results.json`` (test scores beside the input's own) and
``test_results.csv`` (per image, restored and input).
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ratlit.cli.command import exit_on_user_error, hydra_command
from ratlit.training.recipe import run_training, sweep_job

train = exit_on_user_error(run_training)


def _test_psnr(cfg: DictConfig) -> float | None:
    """Hydra's return value for sweepers that optimise: the test PSNR (None for a failed sweep job)."""
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    results = sweep_job(cfg) if in_sweep else train(cfg)
    return ((results or {}).get("test") or {}).get("psnr")


# The trainer's steps stop by Lightning's own signal handling (last.ckpt at the end of a step): train enters
# stop_on_signals itself, around the data build only.
main = hydra_command("train", _test_psnr, stop_anywhere=False)

if __name__ == "__main__":
    main()
