"""Multi-process runs: a rank that dies stops the others at once, with one line naming it (the others would wait
in their next collective until the process group's timeout)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def describe_exit(code: int) -> str:
    """``exit status 1`` / ``signal 9 (SIGKILL)`` from a Popen return code."""
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


class RankWatch(Callback):
    """Watches the other ranks while a multi-process fit or test runs (every ``every`` seconds): rank 0 the
    processes Lightning started for the other local ranks, each of those its parent, rank 0. When one has ended
    (not with status 0), says which in one line, ends the others it started and exits with status 1."""

    def __init__(self, every: float = 1.0, run_dir: str | None = None) -> None:
        self.every, self.run_dir = every, run_dir
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rank, self._parent, self._procs = 0, 0, []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or (self._thread is not None and self._thread.is_alive()):
            return
        self._rank, self._parent = trainer.global_rank, os.getppid()
        self._procs = list(getattr(trainer.strategy.launcher, "procs", None) or [])
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="ratlit-rank-watch", daemon=True)
        self._thread.start()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop.set()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A collective often fails at once when a peer dies (before the next look): name the peer here.
        if self._thread is None or self._stop.is_set():
            return
        for _ in range(30):
            dead = self._dead()
            if dead:
                self._say(dead)
                return
            time.sleep(0.1)

    def _dead(self) -> str | None:
        """Which watched rank has ended (not with status 0), or None."""
        if self._rank == 0:
            for local, proc in enumerate(self._procs, start=1):
                code = proc.poll()
                if code is not None and code != 0:
                    return f"rank {local} (pid {proc.pid}) ended with {describe_exit(code)}"
        elif os.getppid() != self._parent:
            return f"rank 0 (pid {self._parent}) is gone"
        return None

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            dead = self._dead()
            if dead:
                self._say(dead)
                for proc in self._procs:
                    if proc.poll() is None:
                        proc.kill()
                os._exit(1)

    def _say(self, what: str) -> None:
        resume = f"; resume={self.run_dir} continues from its last checkpoint" if self.run_dir else ""
        message = f"[ratlit] DDP {what}: stopping this run{resume}"
        log.error(message)
        print(message, file=sys.stderr, flush=True)
