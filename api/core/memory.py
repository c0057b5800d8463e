"""Keep a worker's resident memory close to what it uses (glibc only; elsewhere this does nothing).

glibc's malloc raises its mmap threshold whenever a large block is freed, after which large blocks come
from the heap and stay there when freed; and it gives every thread its own arena, and the service's
thread pool has dozens of threads. Both let a worker keep memory it no longer uses: measured over a
full-data run, a read-back grew a worker by ~95 MiB with the defaults and by ~35 MiB with the settings
below, which are what `MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2` in the environment would set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Blocks from this size up are mapped and unmapped on their own (glibc's initial default).
MMAP_THRESHOLD = 128 * 1024
#: Arenas shared by all threads.
ARENA_MAX = 2


def limit_heap_retention() -> bool:
    """Apply the settings above; returns whether the C library took them (False off glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success, 0 on error.
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    if not applied:
        logger.warning("the C library refused the malloc settings; memory use may grow under load")
    return applied


def release_free_heap() -> bool:
    """Return the heap's free pages to the system (glibc's `malloc_trim(0)`); False off glibc. Called
    after each bulk write: over a 10x-data run the workers otherwise kept growing with what the bulk
    bodies had used (190 -> 295 MiB each over 5.4 million lines)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim
