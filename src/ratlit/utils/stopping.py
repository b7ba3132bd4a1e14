"""Stopping a command at any moment: within :func:`stop_on_signals`, SIGTERM and SIGINT (Ctrl-C) raise
:class:`Stopped` in the main thread. It unwinds the stack like any error, so every ``finally`` runs (temporary
folders removed, worker pools ended by :func:`worker_pool`) before the command prints one line and exits
128 + the signal number.

:class:`Stopped` derives from ``BaseException``, not ``Exception`` nor ``KeyboardInterrupt``: handlers that
catch errors to go on (``except Exception``) let it through, and so does Lightning's KeyboardInterrupt branch
(which would exit 1 with its own message).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.pool
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A command was stopped by ``signum`` (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise_stopped(signum: int, frame: object) -> None:
    # Cleanup (removing a temporary folder, ending workers) must not be cut short by a second signal.
    for other in SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Stopped` (main thread only; elsewhere a no-op).
    The previous handlers come back after the block, whichever way it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _worker_start() -> None:
    """In each pool worker: Ctrl-C reaches the whole process group, but the parent decides what stops (it
    ends the pool); and the worker dies with its parent should the parent be killed outright (SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


@contextmanager
def worker_pool(workers: int) -> Iterator[multiprocessing.pool.Pool]:
    """A process pool that does not outlive the block: closed and joined when the block succeeds, its workers
    terminated (multiprocessing's ``Pool.terminate``) when it ends by an error or a :class:`Stopped`."""
    pool = multiprocessing.Pool(max(1, int(workers)), initializer=_worker_start)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
