"""Checkpoints a run can trust: written whole or not at all beside their target (never through the system temp
folder), ``last.ckpt`` at every validation, every ``checkpoint_every_n_steps`` and at an interrupt, and a
truncated file never chosen to resume or evaluate.

Lightning 2.6's ModelCheckpoint writes ``last.ckpt`` only together with a new best, and its default save writes
the whole file into the system temp folder before moving it (a copy, when the run folder is on another
filesystem: a kill during it leaves ``last.ckpt`` empty). Writing ``last.ckpt`` at other times has no public
API: the private ModelCheckpoint members used are listed in tests/test_lightning_private.py.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ratlit.utils.errors import InputError
from ratlit.utils.files import atomic_write

log = logging.getLogger(__name__)


class _CountingSink:
    """A write-only file that only counts bytes: the size a checkpoint needs, without writing it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def saved_size(obj: Any) -> int:
    """The bytes ``torch.save(obj)`` writes."""
    sink = _CountingSink()
    torch.save(obj, sink)
    return sink.size


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, saving through a temporary file in the checkpoint's own folder (fsync,
    rename): a checkpoint is whole or absent, on any filesystem. A full disk: :class:`DiskFullError`, one line
    naming the folder and the space needed; the earlier checkpoints and no partial file stay."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f), size=lambda: saved_size(checkpoint))


def is_whole_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete torch zip archive (every member's CRC checks out). A file that is not a zip
    archive at all (torch's legacy format, or no checkpoint) is left to ``torch.load`` to judge; an empty one is
    a save cut short."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if len(head) < 4:
            return False
        if head != b"PK\x03\x04":
            return True
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def check_whole_checkpoint(path: Path) -> None:
    """One-line ValueError naming ``path`` when it is not a whole checkpoint file (a save cut short)."""
    if path.is_file() and not is_whole_checkpoint(path):
        raise InputError(f"checkpoint {path} is truncated or damaged ({path.stat().st_size} bytes; "
                         "a save cut short?): give another checkpoint of the run")


def resume_checkpoint(last: Path) -> Path:
    """The checkpoint to resume from: ``last`` when whole, else (with a warning) the newest whole ``*.ckpt``
    beside it; a one-line ValueError when there is none. Stale temporary files of cut saves are removed."""
    folder = last.parent
    for stale in folder.glob(".*.ckpt.*.tmp*"):
        stale.unlink(missing_ok=True)
    if is_whole_checkpoint(last):
        return last
    whole = sorted((p for p in folder.glob("*.ckpt") if p != last and is_whole_checkpoint(p)),
                   key=lambda p: p.stat().st_mtime)
    if not whole:
        raise InputError(f"{last} is truncated or missing and {folder} holds no other whole checkpoint: "
                         "the run cannot be resumed")
    log.warning("%s is truncated or missing: resuming from %s, the newest whole checkpoint", last, whole[-1])
    return whole[-1]


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` follows training: written at every validation (improved or not),
    every ``checkpoint_every_n_steps`` steps (None: only at validations), at the end of training and when
    Lightning stops on SIGTERM (:mod:`ratlit.training.preemption` turns SIGINT and the SLURM warning into
    that). ``interrupted`` is the checkpoint written at the interrupt (None before one)."""

    def __init__(self, *args: Any, checkpoint_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if checkpoint_every_n_steps is not None and int(checkpoint_every_n_steps) < 1:
            raise InputError(f"checkpoint_every_n_steps must be >= 1 or null, got {checkpoint_every_n_steps}")
        self.every = None if checkpoint_every_n_steps is None else int(checkpoint_every_n_steps)
        self.last_step: int | None = None  # the global step last.ckpt holds
        self.interrupted: str | None = None

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: runs saved before this class existed restore their best path, and back.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _save_last_now(self, trainer: L.Trainer) -> None:
        if (not self.save_last or trainer.sanity_checking or trainer.fast_dev_run
                or trainer.state.fn != TrainerFn.FITTING):
            return
        # Not counted as "saved at this step" by ModelCheckpoint: a validation at the same step still saves a best.
        saved_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved_step

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if filepath == self.last_model_path:
            self.last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self.every and trainer.global_step % self.every == 0 and self.last_step != trainer.global_step:
            self._save_last_now(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved = (self._last_global_step_saved, self._last_checkpoint_saved, self.last_step)
        super().on_validation_end(trainer, pl_module)
        if (self._last_global_step_saved, self._last_checkpoint_saved, self.last_step) == saved:
            self._save_last_now(trainer)  # no new best: last.ckpt still holds this validation's state

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_step != trainer.global_step:
            self._save_last_now(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return super().on_exception(trainer, pl_module, exception)
        for logger in trainer.loggers:  # the rows up to this step are on disk before the checkpoint that ends them
            logger.save()
        if self.last_step != trainer.global_step and not trainer.sanity_checking:
            self._save_last_now(trainer)
        if self.last_step is not None and self.last_model_path:
            self.interrupted = self.last_model_path
