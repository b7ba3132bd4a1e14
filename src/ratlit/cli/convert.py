"""The authors' weights as a ratlit checkpoint:
``python -m ratlit.convert official=<model_best.pth> out=<rat_official.ckpt> task=<ct|pet|pathology>``.

Reads the state dict their Model_RAT.py training wrote, builds the RAT that computes their function
(:func:`ratlit.models.official.from_official`) and writes a checkpoint that ``ratlit.evaluate`` and
``ratlit.predict`` take: the module's weights and the train config of ``task`` composed with the network's options.
The conversion is :mod:`ratlit.training.official_checkpoint`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ratlit.cli.command import exit_on_user_error, hydra_command, prepare_argv
from ratlit.training.official_checkpoint import convert
from ratlit.utils.config import user_path


@exit_on_user_error
def convert_command(cfg: DictConfig) -> Path:
    """``python -m ratlit.convert``: paths relative to where the command runs."""
    task = HydraConfig.get().runtime.choices["task"]  # a config group: task=ct selects conf/task/ct.yaml
    out = convert(user_path(cfg.official), user_path(cfg.out), task,
                  list(cfg.overrides or []), int(cfg.num_heads), int(cfg.window_size), str(cfg.region_impl))
    print(f"wrote {out}")
    return out


OWN_KEYS = ("official", "out", "task", "overrides", "num_heads", "window_size", "region_impl")


def split_argv(argv: list[str]) -> list[str]:
    """Convert's own arguments, with every other ``key=value`` (``partition=sam``, ``data.root=...``: the train
    config's) moved into one ``overrides=[...]`` list for the checkpoint's run config."""
    own, train = argv[:1], []
    for arg in argv[1:]:
        key = arg.split("=", 1)[0].lstrip("+~")
        if arg.startswith("-") or "=" not in arg or key.split(".", 1)[0] in (*OWN_KEYS, "hydra"):
            own.append(arg)
        else:
            train.append('"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return own + ([f"overrides=[{','.join(train)}]"] if train else [])


_convert_main = hydra_command("convert", convert_command)


def main() -> None:
    # official=~/weights.pth: Hydra's lexer rejects an unquoted ~; partition=sam ...: the run config's overrides.
    sys.argv = split_argv(prepare_argv(sys.argv))
    _convert_main()


if __name__ == "__main__":
    main()
