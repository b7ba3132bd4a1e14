"""One process per run folder: a claim made atomically before the folder's first write and held for the
process's life.

The claim is a file, ``<folder>/.ratlit-claim`` (who: pid, host, start time, command), made whole under another
name and linked into place (``link`` fails when the name exists: of two processes, one wins), and locked with
``fcntl.flock`` for as long as the process holds the folder. The lock, not the pid, says whether the holder is
alive: the kernel drops it when the process ends however it ends (a pid may be reused). A claim file whose lock
nobody holds was left by a process that died; the next process takes it over and says so in one line. A normal
end removes the file.

Hydra writes into a run folder (``.hydra/``, the job's log) before the task starts, so the claim is taken in a
Hydra callback (:class:`ClaimRunFolders`, conf/train.yaml ``hydra.callbacks``) when the run starts, before that:
a refused process has written nothing in the folder. A multirun claims its sweep folder the same way, and each
job claims its own folder (:func:`ratlit.training.recipe.sweep_job`). DDP processes that Lightning, SLURM or
torchrun start beside rank 0 run in rank 0's folder and claim nothing.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import secrets
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ratlit.utils.errors import InputError

log = logging.getLogger(__name__)
CLAIM_FILE = ".ratlit-claim"


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def describe(holder_text: str) -> str:
    """A claim file's holder in words: ``pid 123 on host h since <time> (<command>)``."""
    try:
        holder = json.loads(holder_text)
    except ValueError:
        return "another process (its claim file is unreadable)"
    text = f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")


class FolderClaim:
    """This process's hold on ``folder`` (an open, locked claim file). ``release()`` removes the claim file and
    drops the lock (also at exit)."""

    def __init__(self, folder: Path, handle: IO[str]) -> None:
        self.folder, self.handle = folder, handle
        atexit.register(self.release)

    def release(self) -> None:
        if self.handle.closed:
            return
        path = self.folder / CLAIM_FILE
        try:
            if os.stat(path).st_ino == os.fstat(self.handle.fileno()).st_ino:
                path.unlink()  # still ours: removed while locked, so nobody takes a half-released claim
        except OSError:
            pass
        self.handle.close()  # drops the lock
        atexit.unregister(self.release)


def claim_folder(folder: Path, what: str = "run folder") -> FolderClaim:
    """Claim ``folder`` (made if missing) for this process, or raise InputError naming the live holder.

    Nothing is written into a folder another live process holds."""
    folder = Path(folder)
    for _ in range(3):  # a claim released between two looks is looked at again
        path = folder / CLAIM_FILE
        if path.exists():
            claim = _take_over(folder, what)
            if claim is not None:
                return claim
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{CLAIM_FILE}.{os.getpid()}.{secrets.token_hex(3)}"
        handle = open(tmp, "w+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
            handle.write(json.dumps(_holder()))
            handle.flush()
            os.link(tmp, path)  # fails when another process made its claim first
            return FolderClaim(folder, handle)
        except FileExistsError:
            handle.close()
        finally:
            tmp.unlink(missing_ok=True)
    raise InputError(f"{what} {folder}: could not claim it (its claim file keeps changing); try again")


def _take_over(folder: Path, what: str) -> FolderClaim | None:
    """The claim in ``folder`` when its holder is gone (taken over, one line says so); InputError when it is
    alive; None when the claim went away meanwhile."""
    path = folder / CLAIM_FILE
    try:
        handle = open(path, "r+")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = describe(handle.read())
        handle.close()
        raise InputError(f"{what} {folder} is in use by {holder}: one process per folder; wait for it to end, "
                         "or give another folder (hydra.run.dir=... / hydra.sweep.dir=...)") from None
    try:
        same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # released (and maybe claimed afresh) between the open and the lock
        handle.close()
        return None
    old = handle.read()
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder()))
    handle.flush()
    log.warning("%s %s was claimed by %s, which is gone (it ended without releasing it); this process takes it over",
                what, folder, describe(old))
    return FolderClaim(folder, handle)


def is_claimed(folder: Path) -> str | None:
    """The live holder of ``folder`` in words, or None (no claim, or a dead holder's)."""
    path = Path(folder) / CLAIM_FILE
    try:
        handle = open(path)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe(handle.read())
        return None
