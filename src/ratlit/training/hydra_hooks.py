"""Hydra callbacks of ``ratlit.train`` (conf/train.yaml ``hydra.callbacks``): the run folder or the sweep folder
is claimed before Hydra writes into it (:mod:`ratlit.training.run_claim`), a used folder is refused before
anything of this run lands in it, and a sweep ends with one line per job that did not finish and a non-zero exit
(:mod:`ratlit.training.sweep_jobs`)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ratlit.training.run_claim import FolderClaim, claim_folder
from ratlit.utils.config import USER_ERRORS
from ratlit.utils.errors import InputError

log = logging.getLogger("ratlit.train")
SWEEP_FAILED_EXIT = 1


def _refuse(err: BaseException) -> None:
    """Hydra has not set up logging yet: the line goes straight to stderr, then exit 2."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)


def requeued_start() -> bool:
    """A SLURM job started again by a requeue: it continues the run in its own folder."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def remove_if_never_trained(run_dir: Path) -> None:
    """At exit: a folder this run made and that holds no run (no config.yaml, no checkpoint: it stopped before its
    first optimiser step, e.g. a missing data folder or a refused preflight) is removed, so a failed start leaves
    nothing behind; the error was printed when it happened."""
    checkpoints = run_dir / "checkpoints"
    if (run_dir / "config.yaml").exists() or (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return
    logging.shutdown()  # train.log is closed before its folder goes
    shutil.rmtree(run_dir, ignore_errors=True)


class RunFolderHooks(Callback):
    """Claims ``hydra.run.dir`` (a single run, rank 0 only) or ``hydra.sweep.dir`` (a multirun's launching
    process) before Hydra writes there, and holds it until the run or sweep ends."""

    def __init__(self) -> None:
        self.claim: FolderClaim | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if rank_zero_only.rank != 0:  # DDP's other processes run in rank 0's folder
            return
        from ratlit.training.run_folder import refuse_used_run_dir

        run_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        if config.get("resume") and not run_dir.is_dir():  # before anything makes the folder
            _refuse(InputError(f"resume={run_dir}: no such folder; give the folder of a ratlit run"))
        made_here = not run_dir.exists()
        try:
            self.claim = claim_folder(run_dir)
            if not config.get("resume") and not requeued_start():
                refuse_used_run_dir(run_dir)
        except USER_ERRORS as err:
            self.release()
            _refuse(err)
        if made_here:
            atexit.register(remove_if_never_trained, run_dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir"))))
        try:
            self.claim = claim_folder(sweep_dir, "sweep folder")
        except USER_ERRORS as err:
            _refuse(err)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ratlit.training.sweep_jobs import failed_job_lines

        sweep_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir"))))
        self.release()  # before the lines: a look at the folder after them finds it free
        lines = failed_job_lines(sweep_dir)
        if lines:
            print(f"[ratlit] sweep {sweep_dir}: {len(lines)} job(s) did not finish "
                  f"(python -m ratlit.report {sweep_dir} accounts for every job):", file=sys.stderr)
            for line in lines:
                print(f"[ratlit]   {line}", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(SWEEP_FAILED_EXIT)

    def release(self) -> None:
        if self.claim is not None:
            self.claim.release()
            self.claim = None
