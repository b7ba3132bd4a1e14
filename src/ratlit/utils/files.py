"""Writing files whole or not at all: a temporary file next to the target, renamed onto it on success."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ratlit.utils.errors import InputError


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


def check_writable(folder: Path, what: str) -> None:
    """Raise :class:`InputError` unless files can be made in ``folder`` (where it does not exist yet: in its
    nearest existing parent, where it would be made). Tried with a real file, not the permission bits, so a
    read-only mount shows as one, also to root; nothing is created when the check fails."""
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise InputError(f"cannot write the {what} {folder}: {existing} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=existing, prefix=".ratlit-write-check-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise InputError(f"cannot write the {what} {folder}: {err.strerror or err}") from None


class DiskFullError(OSError, InputError):
    """No space left for a file: one line naming the folder, the space needed and the space free."""

    def __init__(self, path: Path, needed: int | None) -> None:
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        need = f"{_megabytes(needed)} needed" if needed else "more space needed"
        super().__init__(errno.ENOSPC, f"no space left in {path.parent} for {path.name}: {need}, "
                                       f"{_megabytes(free)} free; earlier files are intact")

    def __str__(self) -> str:
        return str(self.strerror)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@contextmanager
def atomic_output(path: Path, suffix: str = "", size: Callable[[], int] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``suffix`` keeps writers that look at the extension happy);
    rename it onto ``path`` if the block succeeds, remove it otherwise. A full disk raises
    :class:`DiskFullError` (``size()``: the bytes the file needs, for its message)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes it 0600; the result gets the mode a plain open() would give
            os.chmod(tmp, user_mode())
        os.replace(tmp, path)
    except Exception as err:
        if not _disk_full(err) or isinstance(err, DiskFullError):
            raise
        tmp.unlink(missing_ok=True)  # first free what the partial file took, then measure
        raise DiskFullError(path, size() if size else None) from None
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC, also behind the error a writer raised while cleaning up (torch's zip writer does)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def atomic_write(path: Path, write: Callable[[BinaryIO], object], size: Callable[[], int] | None = None) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, flush it to disk, then rename it onto
    ``path`` (and flush the folder entry). Nothing is written anywhere else (no system temp folder)."""
    with atomic_output(path, size=size) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_folder(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), size=lambda: len(data))


def _fsync_folder(folder: Path) -> None:
    try:  # the rename itself survives a power cut only once the folder is flushed
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def load_weights(path: Path, what: str) -> dict:
    """A dict saved by ``torch.save`` (a state dict or checkpoint), read safely with ``weights_only=True``.

    Raises ``ValueError`` naming ``what`` and the file when it is missing, unreadable or not a dict.
    """
    import torch

    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from err
    if not isinstance(loaded, dict):
        raise InputError(f"{what} {path} holds a {type(loaded).__name__}, not a state dict")
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
