"""A worker process keeps the memory it freed for its next items, and gives it back after.

Owns: `keep_freed_memory` (called by a process worker when a job starts, and by a file worker
before its first file) and `give_back_memory` (called when that job ends; the settings are
undone when the last holder of the process lets go). Imports nothing from headrace.

Why: a stage's function allocates the same large buffers for every item (an image's float
copy, its padded and blurred temporaries; a file's data read and its processed copy). With
glibc's defaults a worker hands those pages back to the operating system as soon as they are
free (a buffer above the mmap threshold is unmapped; two freed neighbours at the top of the heap
pass the trim threshold and are trimmed), and the next item faults every page in again: each
new page costs a page fault and a zeroed page, on many machines more than the work that fills
it. Measured here: benchmark P1 (128x128x3 images decoded and blurred in 2 worker processes)
took about 88 page faults per image and ran at 58 batches/s; with freed memory kept, under 5
faults per image and 72 batches/s. File jobs (16 MiB arrays, np.load -> x10): about 1,000
page faults per file, none once freed memory is kept. So, for the length of a job, a worker
process takes large blocks from the heap (no mmap) and never trims it; what it keeps is its
own high-water mark of the job. When the job ends, the settings go back to glibc's (static)
defaults and every free page is returned, so an idle warm worker holds little.

Only worker processes are tuned, never the program that runs the pipeline (thread and inline
workers share its allocator); only on glibc (elsewhere these are no-ops).
"""

from __future__ import annotations

import os
import sys
from typing import Any

# mallopt(3) parameters and glibc's defaults (malloc/malloc.c: DEFAULT_MMAP_THRESHOLD_MIN,
# DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
#: Free memory at the top of the heap beyond this is still trimmed during a job (mallopt takes a
#: C int: the largest value it accepts).
_KEEP_AT_MOST = 2**31 - 1

_libc: Any = None
#: Holders (a process worker's job, a file worker) that keep freed memory now.
_holders = 0


def _glibc_version() -> str | None:
    """glibc's version string, None on another C library (as `platform.libc_ver` finds it
    first, without importing `platform`)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux") and _glibc_version():
            import ctypes  # here: the program imports this module and needs no ctypes

            try:
                libc = ctypes.CDLL(None)
                if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                    _libc = libc
            except OSError:
                pass
    return _libc


def keep_freed_memory() -> bool:
    """Keep freed memory in this process for reuse, until every caller has called
    `give_back_memory` once. True if the allocator is tuned, False where it cannot be (not
    glibc; then `give_back_memory` must not be called)."""
    global _holders
    libc = _glibc()
    if not libc:
        return False
    if _holders == 0:
        libc.mallopt(_M_MMAP_MAX, 0)  # large blocks from the heap, which is kept ...
        libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_AT_MOST)  # ... and not trimmed after each item
    _holders += 1
    return True


def give_back_memory() -> None:
    """One caller of `keep_freed_memory` lets go; after the last one, glibc's default settings
    are back (static: mallopt cannot restore its dynamic thresholds) and every free page is
    returned to the operating system."""
    global _holders
    libc = _glibc()
    if not libc or _holders == 0:
        return
    _holders -= 1
    if _holders:
        return
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
    libc.malloc_trim(0)


def memory_kept() -> bool:
    """Whether this process keeps its freed memory now."""
    return _holders > 0


def memory_holders() -> int:
    """How many holders (a job, a file worker) keep this process's freed memory now."""
    return _holders
