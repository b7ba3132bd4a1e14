"""Fill a task's partition cache: ``python -m ratlit.precompute task=ct partition=slic``.

Every LQ image of the data set (all splits) is partitioned once and stored; an interrupted run resumes
where it stopped (finished entries are reused), and corrupt entries are recomputed.
"""

from __future__ import annotations

from omegaconf import DictConfig

from ratlit.cli.command import exit_on_user_error, hydra_command
from ratlit.utils.config import instantiate


@exit_on_user_error
def precompute(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.data)
    stats = datamodule.prepare_data()
    partitioner = datamodule.partitioner
    timing = (f"{sum(stats.seconds) / len(stats.seconds):.3f} s per computed image" if stats.seconds
              else "nothing to compute")
    print(
        f"{cfg.task_name}: partition {partitioner.spec} -> {datamodule.partition_cache.folder}\n"
        f"computed {stats.computed}, reused {stats.reused}, repaired {stats.repaired}; {timing}"
    )


main = hydra_command("precompute", precompute)

if __name__ == "__main__":
    main()
