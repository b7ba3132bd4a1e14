"""Per-dataset cache of label maps, keyed by the LQ image's content and the partitioner's spec.

Layout: ``<root>/<partitioner name>-<fingerprint>/<image sha256>.npz`` (compressed numpy, no pickles) and
a ``partitioner.json`` describing the partitioner. Entries are written to a temporary file in the same
folder and renamed, so readers (other DDP ranks, data-loader workers) see a whole entry or none. A miss is
computed under a per-entry lock (``flock`` on ``.<digest>.lock`` beside the entry, removed by its holder when
the entry is written): of runs started together on one fresh cache, one computes each entry and the others
wait for it, then reuse it. A truncated or corrupt entry (bad zip, wrong keys, wrong shape or digest) is
recomputed and replaced, under the same lock. Where the filesystem has no ``flock`` the lock is skipped
(a warning says so): entries stay whole, but may be computed more than once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ratlit.partition.base import Partitioner
from ratlit.utils.errors import InputError
from ratlit.utils.files import atomic_write, check_writable, write_text_atomic

log = logging.getLogger(__name__)


def image_digest(image: Any) -> str:
    """SHA-256 of an image's values, shape and dtype."""
    array = np.ascontiguousarray(image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class CacheStats:
    """What a pass over the cache did."""

    computed: int = 0
    reused: int = 0
    repaired: int = 0
    seconds: list[float] = field(default_factory=list)  # partitioning time of each computed image

    def add(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)


class PartitionCache:
    """``cache.labels(image) -> int64 [H, W]``: from disk, or computed by ``partitioner`` and stored."""

    def __init__(self, root: str | os.PathLike, partitioner: Partitioner) -> None:
        self.partitioner = partitioner
        self.folder = Path(root).expanduser() / f"{partitioner.name}-{partitioner.fingerprint}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"partition cache folder {self.folder} cannot be created: {err}") from err
        self._writable = False
        spec_file = self.folder / "partitioner.json"
        if not spec_file.exists():
            self._check_writable()
            text = json.dumps({"name": partitioner.name, **partitioner.params()}, indent=2, sort_keys=True, default=str)
            write_text_atomic(spec_file, text)

    def _check_writable(self) -> None:
        if not self._writable:
            check_writable(self.folder, "partition cache folder (RATLIT_CACHE / paths.cache_dir)")
            self._writable = True

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.npz"

    def contains(self, image: Any) -> bool:
        """Whether a valid entry for ``image`` is on disk."""
        return self._read(image_digest(image), tuple(image.shape[-2:])) is not None

    def labels(self, image: Any, stats: CacheStats | None = None) -> np.ndarray:
        """The label map of ``image`` (``[H, W]`` or ``[C, H, W]``), computing and storing it on a miss."""
        digest = image_digest(image)
        shape = tuple(image.shape[-2:])
        labels, status = self._read(digest, shape), "reused"
        if labels is None:
            self._check_writable()  # a read-only cache serves what it holds; a miss must be stored
            with self._entry_lock(digest):
                existed = self.path(digest).exists()
                labels = self._read(digest, shape)  # another process may have written it while this one waited
                if labels is None:
                    start = time.perf_counter()
                    labels = self.partitioner(image)
                    if stats is not None:
                        stats.seconds.append(time.perf_counter() - start)
                    self._write(digest, labels)
                    status = "repaired" if existed else "computed"
        if stats is not None:
            stats.add(status)
        return labels

    @contextmanager
    def _entry_lock(self, digest: str) -> Iterator[None]:
        """Hold an exclusive ``flock`` on the entry's lock file. The holder removes the file before releasing
        it, so a process that waited on the removed file takes a fresh one (and then finds the entry)."""
        path = self.folder / f".{digest}.lock"
        fd = _locked(path)
        if fd is None:
            log.warning("partition cache %s: no file lock; concurrent runs may compute an entry twice", self.folder)
        try:
            yield
        finally:
            if fd is not None:
                path.unlink(missing_ok=True)
                os.close(fd)

    def _read(self, digest: str, shape: tuple[int, int]) -> np.ndarray | None:
        path = self.path(digest)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                labels, stored = entry["labels"], str(entry["digest"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
            return None
        if stored != digest or labels.shape != tuple(shape) or not np.issubdtype(labels.dtype, np.integer):
            return None
        return labels.astype(np.int64)

    def _write(self, digest: str, labels: np.ndarray) -> None:
        dtype = np.int32 if labels.max(initial=0) < 2**31 else np.int64
        atomic_write(
            self.path(digest),
            lambda f: np.savez_compressed(f, labels=labels.astype(dtype), digest=np.array(digest)),
        )


def _locked(path: Path) -> int | None:
    """A descriptor of ``path`` (created if needed) holding an exclusive ``flock``, or None without flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current, mine = os.stat(path), os.fstat(fd)
        except FileNotFoundError:  # removed by the previous holder after this process opened it
            os.close(fd)
            continue
        except OSError:  # a filesystem without flock (some network mounts)
            os.close(fd)
            return None
        if (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino):
            return fd
        os.close(fd)  # replaced by a new lock file while this process waited: lock that one
