"""Fill a task's partition cache: ``python -m ratlit.precompute task=ct partition=slic``.

Every LQ image of the data set (all splits) is partitioned once and stored; an interrupted run resumes
where it stopped (finished entries are reused), and corrupt entries are recomputed.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ratlit.allocator import keep_freed_memory
from ratlit.config import CONF_DIR, exit_on_user_error, instantiate, prepare_argv


@hydra.main(config_path=str(CONF_DIR), config_name="precompute", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    datamodule = instantiate(cfg.data)
    stats = datamodule.prepare_data()
    partitioner = datamodule.partitioner
    timing = f"{sum(stats.seconds) / len(stats.seconds):.3f} s per computed image" if stats.seconds else "nothing to compute"
    print(
        f"{cfg.task_name}: partition {partitioner.spec} -> {datamodule.partition_cache.folder}\n"
        f"computed {stats.computed}, reused {stats.reused}, repaired {stats.repaired}; {timing}"
    )


if __name__ == "__main__":
    import sys

    sys.argv = prepare_argv(sys.argv)  # data.root=~/scans: Hydra's lexer rejects an unquoted ~
    main()
