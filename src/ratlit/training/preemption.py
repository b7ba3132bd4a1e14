"""Stopping a run cleanly: SIGTERM (a scheduler's preemption), SIGINT (Ctrl-C) and SLURM's warning signal stop
training at the end of the current step, ``last.ckpt`` is written there (:class:`RunCheckpoint`) and the process
exits non-zero (128 + the signal: SIGTERM 143, SIGINT 130) with one line naming the checkpoint and the resume
command; under SLURM the job is requeued and its next start resumes by itself.

Built on Lightning's own handling: Lightning's SIGTERM handler sets ``trainer.received_sigterm`` and its loops
then raise ``SIGTERMException`` at the end of a step (or a validation batch), after which ``on_exception``
hooks run. SIGINT and the SLURM requeue signal (``SLURMEnvironment.requeue_signal``, USR1; the preset
conf/hydra/launcher/slurm.yaml asks SLURM for ``--signal=USR1@90``) are turned into the same stop by raising
SIGTERM (``signal.raise_signal``), instead of Lightning's KeyboardInterrupt (which stops mid-step, saving
nothing) and its USR1 handler (a checkpoint taken mid-step in the handler, written to ``hpc_ckpt_N.ckpt``
beside the run). The run's SLURMEnvironment is its own object, given to the Trainer (:func:`slurm_environment`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import lightning as L
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from ratlit.training.checkpoint_saving import RunCheckpoint, resume_checkpoint

log = logging.getLogger(__name__)


class StopOnSignals(Callback):
    """Turns SIGINT and SLURM's requeue signal into Lightning's SIGTERM stop and records which signal came
    (``received``). A second SIGINT stops at once (KeyboardInterrupt), saving nothing. ``environment``: the
    cluster environment given to the Trainer (:func:`slurm_environment`); a SLURMEnvironment that requeues
    names the requeue signal."""

    def __init__(self, environment: ClusterEnvironment | None = None) -> None:
        self.received: int | None = None
        self.requeue_signal: int | None = None
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            self.requeue_signal = int(environment.requeue_signal or signal.SIGUSR1)
        self._installed: dict[int, Any] = {}

    def _install(self) -> None:
        # Lightning registers its handlers when a fit / test starts and restores the old ones at its end.
        signals = [signal.SIGTERM, signal.SIGINT] + ([self.requeue_signal] if self.requeue_signal else [])
        for signum in signals:
            previous = signal.getsignal(signum)
            if previous is not self._installed.get(signum):
                self._installed[signum] = lambda s, f, previous=previous: self._handle(previous, s, f)
                signal.signal(signum, self._installed[signum])

    def _handle(self, previous: Any, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        if self.received is None:
            self.received = signum
            print(f"[ratlit] {signal.Signals(signum).name}: stopping at the end of this step and saving last.ckpt "
                  "(Ctrl-C again to stop at once, unsaved)" if signum == signal.SIGINT else
                  f"[ratlit] {signal.Signals(signum).name}: stopping at the end of this step and saving last.ckpt",
                  file=sys.stderr, flush=True)
        if signum != signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)  # handled at once, by the handler above: Lightning's stop
        elif callable(previous):
            previous(signum, frame)  # Lightning's: sets trainer.received_sigterm, stops DDP children

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()


def slurm_environment(plugins: list[Any]) -> SLURMEnvironment | None:
    """The SLURMEnvironment the Trainer is to use, as an object the run keeps (for :class:`StopOnSignals`): the one
    in ``plugins``; else, where no cluster environment is given and Lightning would choose SLURM's itself (its
    own order: TorchElastic's first), a new one, appended to ``plugins``; else None."""
    given = next((p for p in plugins if isinstance(p, ClusterEnvironment)), None)
    if given is not None:
        return given if isinstance(given, SLURMEnvironment) else None
    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return None
    plugins.append(SLURMEnvironment())
    return plugins[-1]


def slurm_job_id() -> str | None:
    """This SLURM job's id as ``scontrol requeue`` takes it (``<array job>_<task>`` in an array)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> str:
    """Requeue this SLURM job (its next start resumes: :func:`requeued_checkpoint`); what happened, in words."""
    job = slurm_job_id()
    if not job:
        return "not a SLURM job: nothing requeued"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"requeueing SLURM job {job} failed: {err}"
    if done.returncode != 0:
        return f"requeueing SLURM job {job} failed: {(done.stderr or done.stdout).strip()}"
    return f"SLURM job {job} requeued; it resumes from there"


def exit_after_signal(trainer: L.Trainer, stop: StopOnSignals, run_dir: Path) -> NoReturn:
    """After Lightning stopped on a signal: one line naming the checkpoint and the resume command (the job
    requeued first under SLURM), then exit with 128 + the signal number."""
    signum = stop.received or signal.SIGTERM
    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, RunCheckpoint)), None)
    saved = (checkpoint.interrupted or checkpoint.last_model_path) if checkpoint else None
    last = Path(saved) if saved else run_dir / "checkpoints" / "last.ckpt"
    step = checkpoint.last_step if checkpoint and checkpoint.last_step is not None else "?"
    where = f"checkpoint {last} (step {step})" if last.is_file() else "no checkpoint yet"
    requeued = ""
    if signum == stop.requeue_signal and trainer.is_global_zero:
        requeued = "; " + requeue_slurm_job()
    if trainer.is_global_zero:
        print(f"\n[ratlit] stopped by {signal.Signals(signum).name} at step {trainer.global_step}: {where}{requeued}; "
              f"continue with: python -m ratlit.train resume={run_dir}", flush=True)  # \n: after the bar's line
    sys.exit(128 + int(signum))


def requeued_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint a requeued SLURM job continues from: its run folder already holds this run (a first start
    refuses a used folder, and a requeued job keeps its folder), so it resumes by itself from ``last.ckpt`` (or
    the newest whole checkpoint), keeping the run's W&B id. None when not a requeued start."""
    if os.environ.get("SLURM_RESTART_COUNT", "0").strip() in ("", "0"):
        return None
    run_dir = Path(str(cfg.run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = run_dir / "config.yaml"
    if not saved.is_file() or not last.parent.is_dir() or not any(last.parent.glob("*.ckpt")):
        return None
    wandb = OmegaConf.select(OmegaConf.load(saved), "logger.wandb.id", default=None)
    if wandb and OmegaConf.select(cfg, "logger.wandb", default=None) is not None:
        with open_dict(cfg):
            cfg.logger.wandb.id = wandb
    checkpoint = resume_checkpoint(last)
    log.info("SLURM restart %s: resuming %s from %s", os.environ["SLURM_RESTART_COUNT"], run_dir, checkpoint)
    return checkpoint
