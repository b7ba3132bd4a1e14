"""A sweep that loses nothing: a failed job records why in its own folder and the sweep goes on.

Hydra's basic launcher stops a whole multirun when a job exits (``sys.exit``), so in a multirun ``ratlit.train``
catches a job's error, writes the job's ``results.json`` with ``status: failed``, the error line, the phase and the
optimiser step it failed at (:class:`RunProgress` follows them), and returns; when every job has run, the sweep
prints one line per failed job and exits non-zero (:func:`failed_job_lines`, called by
:class:`ratlit.training.hydra_hooks.RunFolderHooks` from the sweep's own record, so jobs run in other processes
by a parallel launcher are counted too).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from ratlit.utils.files import write_text_atomic
from ratlit.utils.sweeps import job_folders, parse_overrides, planned_jobs, varying_keys

log = logging.getLogger(__name__)
RESULTS = "results.json"


class RunProgress(Callback):
    """The phase a run is in (``setup``, ``sanity check``, ``training``, ``validation``, ``test``) and its optimiser
    step, for the record of a run that fails."""

    def __init__(self) -> None:
        self.phase, self.step = "setup", 0

    def where(self) -> str:
        """``training step N`` / ``validation at step N`` / ``test`` / ``setup`` (before training)."""
        return self.describe(self.phase, self.step)

    @staticmethod
    def describe(phase: str, step: int) -> str:
        if phase == "training":
            return f"training step {step}"
        if phase == "validation":
            return f"validation at step {step}"
        return phase

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase = "sanity check"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase, self.step = "training", trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.phase, self.step = "training", trainer.global_step + 1  # the N-th step, as checkpoints count

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.phase, self.step = "validation", trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.phase = "training"
        else:
            self.phase = "setup"

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase, self.step = "test", trainer.global_step


def error_line(err: BaseException) -> str:
    """The error in one line: the message of a user error; the type and message of anything else."""
    text = " ".join(str(err.args[0] if isinstance(err, KeyError) and err.args else err).split())
    return text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"


def record_failure(run_dir: Path, err: BaseException, progress: RunProgress, about: dict[str, Any]) -> dict[str, Any]:
    """Write ``results.json`` of a failed run: ``status: failed``, the error line, phase and step, and ``about``
    (task, overrides, name, ...); returns it."""
    # An error that knows where it arose (a training step's NaN, found when the next phase starts) says so.
    phase, step = getattr(err, "phase", progress.phase), getattr(err, "step", progress.step)
    where = RunProgress.describe(phase, step)
    record = {"status": "failed", "error": error_line(err), "phase": phase, "step": step, "where": where, **about}
    write_text_atomic(Path(run_dir) / RESULTS, json.dumps(record, indent=2))
    return record


def job_status(folder: Path | None) -> tuple[str, str]:
    """``(status, reason)`` of a sweep job's folder: finished, failed (its error), incomplete (a folder without
    results.json: crashed, killed or still running) or missing (no folder)."""
    if folder is None:
        return "missing", "no folder (deleted, or the job never started)"
    path = folder / RESULTS
    if not path.is_file():
        from ratlit.training.run_claim import is_claimed

        holder = is_claimed(folder)
        return ("running", f"held by {holder}") if holder else ("incomplete", "no results.json (crashed or killed)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return "incomplete", f"unreadable results.json: {err}"
    if record.get("status") == "failed":
        where, error = str(record.get("where") or record.get("phase") or "?"), str(record.get("error") or "?")
        return "failed", error if error.startswith(where) else f"{where}: {error}"
    return "finished", ""


def sweep_accounting(sweep_dir: Path) -> list[dict[str, Any]] | None:
    """Every job the sweep in ``sweep_dir`` planned (its ``multirun.yaml``): ``num``, ``overrides``, ``folder``
    (None when absent), ``status`` and ``reason``. None when the folder holds no basic sweeper's record."""
    jobs = planned_jobs(sweep_dir)
    if jobs is None:
        return None
    folders = job_folders(sweep_dir)
    out = []
    for job in jobs:
        folder = folders.get(job.num)
        status, reason = job_status(folder)
        out.append({"num": job.num, "overrides": list(job.overrides), "folder": folder, "status": status,
                    "reason": reason})
    return out


def failed_job_lines(sweep_dir: Path) -> list[str]:
    """One line per job of the sweep in ``sweep_dir`` that did not finish (failed, incomplete or missing)."""
    jobs = sweep_accounting(sweep_dir) or []
    keys = varying_keys([job["overrides"] for job in jobs])
    lines = []
    for job in jobs:
        if job["status"] in ("finished", "running"):
            continue
        varying = ",".join(f"{k}={v}" for k, v in parse_overrides(job["overrides"]).items() if k in keys)
        where = job["folder"] or Path(sweep_dir) / str(job["num"])
        lines.append(f"job {job['num']} ({varying}) {job['status']}: {job['reason']} [{where}]")
    return lines
