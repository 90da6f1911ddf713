"""release_freed_memory: freed heap pages pinned by live blocks go back to the system (glibc)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from modify._core.memory import _malloc_trim, release_freed_memory

pytestmark = pytest.mark.skipif(
    _malloc_trim() is None or not Path("/proc/self/status").exists(), reason="glibc's malloc_trim and Linux's /proc"
)


def anonymous_mib() -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("RssAnon"))
    return int(line.split()[1]) / 1024


def test_freed_blocks_pinned_by_live_ones_are_returned():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    big, small = [], []
    for _ in range(8000):  # 16 KiB blocks (too small for free() to trim the heap), each pinned by a live one
        block = libc.malloc(16 * 1024)
        ctypes.memset(block, 1, 16 * 1024)
        big.append(block)
        small.append(libc.malloc(16))
    for block in big:
        libc.free(block)
    held = anonymous_mib()  # glibc keeps the freed blocks
    release_freed_memory()
    returned = held - anonymous_mib()
    for block in small:
        libc.free(block)
    assert returned > 60  # of the 125 MiB freed
