"""Per-dataset cache of label maps, keyed by the LQ image's content and the partitioner's spec.

Layout: ``<root>/<partitioner name>-<fingerprint>/<image sha256>.npz`` (compressed numpy, no pickles) and
a ``partitioner.json`` describing the partitioner. Entries are written to a temporary file in the same
folder and renamed, so readers (other DDP ranks, data-loader workers) see a whole entry or none; two
writers of one key both write the same labels and the last rename wins. A truncated or corrupt entry
(bad zip, wrong keys, wrong shape or digest) is recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ratlit.utils.files import atomic_write, write_text_atomic
from ratlit.partition.base import Partitioner


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
            raise ValueError(f"partition cache folder {self.folder} cannot be created: {err}") from err
        spec_file = self.folder / "partitioner.json"
        if not spec_file.exists():
            text = json.dumps({"name": partitioner.name, **partitioner.params()}, indent=2, sort_keys=True, default=str)
            write_text_atomic(spec_file, text)

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.npz"

    def contains(self, image: Any) -> bool:
        """Whether a valid entry for ``image`` is on disk."""
        return self._read(image_digest(image), tuple(image.shape[-2:])) is not None

    def labels(self, image: Any, stats: CacheStats | None = None) -> np.ndarray:
        """The label map of ``image`` (``[H, W]`` or ``[C, H, W]``), computing and storing it on a miss."""
        digest = image_digest(image)
        shape = tuple(image.shape[-2:])
        path = self.path(digest)
        existed = path.exists()
        labels = self._read(digest, shape)
        if labels is not None:
            status = "reused"
        else:
            start = time.perf_counter()
            labels = self.partitioner(image)
            if stats is not None:
                stats.seconds.append(time.perf_counter() - start)
            self._write(digest, labels)
            status = "repaired" if existed else "computed"
        if stats is not None:
            stats.add(status)
        return labels

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
