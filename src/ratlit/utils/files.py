"""Writing files whole or not at all: a temporary file next to the target, renamed onto it on success."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def user_mode(directory: bool = False) -> int:
    """The permission bits a plain ``open`` / ``mkdir`` would give under the process's umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without setting it (os.umask(0) would briefly open up files other threads create)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o077)
        os.umask(mask)
        return mask


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """``tempfile.mkdtemp`` (mode 0700) widened to the user's umask, so a folder renamed into place is as
    readable by colleagues as any folder the user creates."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(tmp, user_mode(directory=True))
    return tmp


@contextmanager
def atomic_output(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``suffix`` keeps writers that look at the extension happy);
    rename it onto ``path`` if the block succeeds, remove it otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes it 0600; the result gets the mode a plain open() would give
            os.chmod(tmp, user_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fileobj)`` on a temporary file, flush it to disk, then rename it onto ``path``."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def load_weights(path: Path, what: str) -> dict:
    """A dict saved by ``torch.save`` (a state dict or checkpoint), read safely with ``weights_only=True``.

    Raises ``ValueError`` naming ``what`` and the file when it is missing, unreadable or not a dict.
    """
    import torch

    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from err
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} {path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out`` to write into; if the block succeeds, its files are moved
    into ``out`` (the whole folder renamed when ``out`` is new); otherwise it is removed, with every folder this
    call created on the way: a failure leaves no new folder or file behind."""
    import shutil

    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # the topmost new folder
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = make_temp_dir(out.parent, f".{out.name}.partial-")
    try:
        yield stage
        if not out.exists():
            os.rename(stage, out)
        else:
            for item in sorted(stage.iterdir()):
                os.replace(item, out / item.name)
    except BaseException:
        if created is not None and created != out:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
