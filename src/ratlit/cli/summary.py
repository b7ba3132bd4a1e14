"""Parameter count of a model config: ``python -m ratlit.summary model=edsr task=pathology``."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ratlit.cli.command import exit_on_user_error, hydra_command
from ratlit.utils.config import instantiate


@exit_on_user_error
def summary(cfg: DictConfig) -> int:
    net = instantiate(cfg.model.net)
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    choice = HydraConfig.get().runtime.choices.get("model", "?")
    print(f"{choice}: {type(net).__module__}.{type(net).__name__}, task {cfg.task_name} "
          f"({cfg.model.net.in_channels} channel(s)): {total:,} parameters ({total / 1e6:.2f} M), "
          f"{trainable:,} trainable")
    return total


main = hydra_command("summary", summary, keep_memory=False)

if __name__ == "__main__":
    main()
