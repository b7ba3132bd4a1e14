"""The process's CPU memory allocator: keep freed memory for reuse instead of handing it back to the OS.

glibc's malloc serves every block of more than 32 MB (less before its threshold adapts) with a fresh ``mmap``
and unmaps it on ``free``; PyTorch frees each activation when it is done with it, so a forward at 512x512
(64-channel maps of 67 MB) maps, faults in page by page and unmaps the same memory again and again. Keeping
freed memory saves those page faults for a higher resident peak (freed blocks wait for reuse); the figures are
in docs/performance.md, "CPU memory allocator". PyTorch's CPU tuning guide gives the same advice with jemalloc
or tcmalloc; this needs no preloaded library. train and precompute call :func:`keep_freed_memory` first;
predict and evaluate only for tiled inference without dense R-MSA (ratlit.models.tiling.keeps_freed_memory:
untiled it grew the peak beyond 1.5x).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

from ratlit.utils.errors import InputError

log = logging.getLogger(__name__)

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB free at the top of the heap
OPT_OUT = "RATLIT_MALLOC"  # keep (the default) | system: leave malloc as it is


def keep_freed_memory() -> bool:
    """Ask glibc's malloc never to ``mmap`` a block and to keep freed memory; True where that took effect.

    Leaves malloc alone where the user chose its settings (``GLIBC_TUNABLES`` with ``glibc.malloc``, the
    ``MALLOC_*_`` variables, ``RATLIT_MALLOC=system``), where another allocator is preloaded (jemalloc,
    tcmalloc), and off glibc (macOS, Windows, musl).
    """
    choice = os.environ.get(OPT_OUT, "keep").strip().lower() or "keep"
    if choice not in ("keep", "system"):
        raise InputError(f"{OPT_OUT} must be keep or system, got {os.environ[OPT_OUT]!r}")
    if choice == "system":
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
            name.startswith("MALLOC_") and name.endswith("_") for name in os.environ):
        return False
    if any(lib in os.environ.get("LD_PRELOAD", "") for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt does nothing
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    if done:
        log.debug("malloc keeps freed memory for reuse (%s=system to leave it as it is)", OPT_OUT)
    return done
