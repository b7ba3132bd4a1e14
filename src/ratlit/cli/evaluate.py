"""Evaluate a checkpoint on a split: ``python -m ratlit.evaluate ckpt=<run>/checkpoints/best-....ckpt``.

Prints PSNR and SSIM (mean ± std over images, as the paper's tables) beside the input's own scores (LQ
against HQ on the same images) and the gain, and writes ``eval_<split>.md``,
``eval_<split>.csv`` (per image) and ``eval_<split>.json`` next to the run (or to ``out=``). The pipeline is
:mod:`ratlit.inference.evaluation`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from ratlit.cli.command import exit_on_user_error, hydra_command
from ratlit.inference.evaluation import evaluate_checkpoint


@exit_on_user_error
def evaluate(cfg: DictConfig) -> dict:
    result, table, out = evaluate_checkpoint(cfg)
    print(table, end="")
    print(f"wrote {out}/eval_{cfg.split}.{{md,csv,json}}")
    return result


# data.root=... is merged into the run's data config (set whether or not evaluate.yaml lists the key).
main = hydra_command("evaluate", evaluate, open_nodes=("data",), keep_memory=False)  # set once tiling is known

if __name__ == "__main__":
    main()
