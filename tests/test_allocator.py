"""The CLIs' malloc setting: freed memory is kept for reuse (no mmap / page-fault storm), and the user's own
allocator settings win."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from ratlit.utils import allocator

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# Fills and frees a 64 MB tensor 20 times (as a forward does with its largest activations) and prints the
# page faults that took: with mmap'd blocks every round faults the whole tensor in again. Kept memory needs
# some rounds first: the heap grows until a freed block fits the next one, which took 13 rounds on a loaded
# 2-core CPU (small blocks of other threads land in the freed one), so warm up until 3 rounds in a row fault
# (almost) nothing, or 60 rounds.
FAULTS = """
import resource, torch
from ratlit.utils.allocator import keep_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(keep_freed_memory())
quiet = 0
for _ in range(60):
    quiet = quiet + 1 if faults() < 100 else 0
    if quiet == 3:
        break
print(sum(faults() for _ in range(20)))
"""


def faults(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("RATLIT_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")
             and not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", FAULTS], env={**clean, **env}, capture_output=True, text=True,
                          check=True)
    took, count = done.stdout.split()
    return took == "True", int(count)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults():
    kept, kept_faults = faults()
    system, system_faults = faults(RATLIT_MALLOC="system")
    assert kept and not system
    if system_faults < 20 * 16 * 2**20 * 4 // 4096 // 2:  # not about every 4 KiB page of every round
        pytest.skip(f"{system_faults} faults with glibc's defaults: mmap'd blocks get huge pages here")
    assert kept_faults < system_faults / 10


@pytest.mark.parametrize("name, value", [
    ("RATLIT_MALLOC", "system"),
    ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576"),
    ("MALLOC_MMAP_THRESHOLD_", "1048576"),
    ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
])
def test_the_users_own_allocator_settings_win(monkeypatch, name, value):
    called = []
    monkeypatch.setattr(ctypes, "CDLL", lambda *args: called.append(args))
    monkeypatch.setenv(name, value)
    assert allocator.keep_freed_memory() is False
    assert not called  # malloc left untouched


def test_off_glibc_nothing_happens(monkeypatch):
    monkeypatch.delenv("RATLIT_MALLOC", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


def test_a_misspelt_choice_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("RATLIT_MALLOC", "off")
    with pytest.raises(ValueError, match="RATLIT_MALLOC must be keep or system, got 'off'"):
        allocator.keep_freed_memory()
