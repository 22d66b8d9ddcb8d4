"""How many workers a file job runs: cores, files, and the memory a worker may need.

Owns: `available_memory` (bytes this process may still use: MemAvailable, within a cgroup
limit), `worker_count`. Imports nothing from headrace but `_run.parse_bytes`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .._run import parse_bytes

log = logging.getLogger("headrace")

#: Fraction of the available memory that a job's workers may take together; BigMultiPipe's
#: ``mem_frac`` default, which leaves room for the parent and the page cache.
MEMORY_FRACTION = 0.8
#: With no ``worker_memory``, a worker is assumed to hold this many copies of its largest input
#: at once (the data read, a processed copy, the copy being written).
COPIES_PER_WORKER = 3


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup v2 memory limit, if there is one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available to new work on this machine, or None if unknown."""
    known = [m for m in (_meminfo_available(), _cgroup_room()) if m is not None]
    return min(known) if known else None


def worker_count(
    files: int,
    *,
    workers: int | None,
    worker_memory: int | str | None,
    largest_input: int,
    available: int | None = None,
) -> int:
    """Workers for ``files`` files: at most the cores, the files, ``workers``, and as many as
    fit in memory at ``worker_memory`` bytes each (or a guess from the largest input).
    """
    count = min(cpu_count(), max(1, files))
    if workers is not None:
        count = min(count, workers)
    per_worker = (
        parse_bytes(worker_memory)
        if worker_memory is not None
        else COPIES_PER_WORKER * largest_input
    )
    room = available_memory() if available is None else available
    if per_worker > 0 and room is not None:
        fit = int(room * MEMORY_FRACTION) // per_worker
        if fit < 1:
            log.warning(
                "a file job's worker may need %d bytes but only %d are available; running "
                "one worker",
                per_worker,
                room,
            )
        count = min(count, max(1, fit))
    return max(1, count)
