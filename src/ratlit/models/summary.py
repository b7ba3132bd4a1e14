"""Parameter count of a model config: ``python -m ratlit.models.summary model=edsr task=pathology``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ratlit.config import CONF_DIR, exit_on_user_error, instantiate


@hydra.main(config_path=str(CONF_DIR), config_name="summary", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> int:
    net = instantiate(cfg.model.net)
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    choice = hydra.core.hydra_config.HydraConfig.get().runtime.choices.get("model", "?")
    print(f"{choice}: {type(net).__module__}.{type(net).__name__}, task {cfg.task_name} "
          f"({cfg.model.net.in_channels} channel(s)): {total:,} parameters ({total / 1e6:.2f} M), {trainable:,} trainable")
    return total


if __name__ == "__main__":
    main()
