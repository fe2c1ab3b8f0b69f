"""Handing freed memory back to the operating system.

glibc keeps large freed blocks in its per-thread arenas (its mmap threshold grows after a large free), so a
process that decoded a huge image, or replaced a session, stays at its high-water mark unless asked to trim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def trim_heap() -> None:
    """``malloc_trim(0)``: return the free memory of every arena to the OS (a no-op where libc is not glibc)."""
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass
