"""headrace's private temporary folders, named so that a dead owner's folders can be found.

Owns: `make` (a fresh 0700 folder ``headrace-<owner pid>-<kind>-<random>`` in the temp dir),
`owner_pid`, `stale` (the folders whose owner process is dead) and `sweep_stale`. The owner's
pid is in the name, as in the names of shared-memory segments (`_shm`), so that a later
process can tell a folder a killed program left from one a live program still uses: a folder
counts as stale only when its owner is dead and it belongs to this user. A folder named in any
other way (an older headrace's, or one a test suite made) has no known owner and is never
removed. The first `make` of a process removes the stale folders it finds (what a killed
program left is cleaned by the next one). Imports nothing from headrace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from ._shm import pid_alive

PREFIX = "headrace-"

_swept = False
_swept_lock = threading.Lock()


def make(kind: str) -> str:
    """A fresh private (0700) folder ``headrace-<pid>-<kind>-<random>`` in the temp dir."""
    global _swept
    with _swept_lock:
        first, _swept = not _swept, True
    if first:
        sweep_stale()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{kind}-")


def owner_pid(name: str) -> int | None:
    """The pid in a folder name made by `make` (None: not named by `make`)."""
    parts = name.split("-")
    if len(parts) < 4 or parts[0] + "-" != PREFIX or not parts[1].isdigit():
        return None
    return int(parts[1])


def stale(folder: str | None = None) -> list[str]:
    """Paths of this user's headrace folders in ``folder`` (the temp dir) whose owner is dead.

    Never a folder of a live process, of another user, or without an owner in its name.
    """
    root = Path(folder if folder is not None else tempfile.gettempdir())
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    found = []
    for entry in entries:
        pid = owner_pid(entry.name)
        if pid is None or pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            mine = entry.stat(follow_symlinks=False).st_uid == os.getuid()
            if mine and entry.is_dir(follow_symlinks=False) and not pid_alive(pid):
                found.append(str(root / entry.name))
    return sorted(found)


def sweep_stale(folder: str | None = None) -> int:
    """Remove the folders `stale` finds; how many were removed."""
    removed = 0
    for path in stale(folder):
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
            removed += 1
    return removed
