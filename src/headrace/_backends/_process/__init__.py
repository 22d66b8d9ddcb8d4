"""The process backend: each worker is a process, supervised by one thread in the parent.

    parent                                           worker process (slot i)
    ------                                           -----------------------
    supervisor thread i:                             serve(): run_calls / run_stream over
      take tasks (batched) --- task pipe -------->     the pipe, with the shared worker body
      wait(result pipe, sentinel, wake pipe)          (execute: retries, item context)
      <-- results (batched), log records ---------    progress[i] = seq of the item it runs

A supervisor knows every item its worker holds. It waits on the result pipe, the process's
sentinel and a wake-up pipe (written on cancel) together, never with sleeps. When the sentinel
fires the worker is dead: its item is reported as `WorkerCrashedError` (or retried), the items
queued behind it are sent again, and a fresh process takes its slot. An item that keeps
crashing fails once its retries are used; a crash loop (`CRASH_LOOP` different items crashing
within `CRASH_WINDOW_S`) ends the run with one error. With ``timeout=`` a worker holds one
item at a time; when the item runs late the worker is killed and replaced.

Small items travel in batches sized so that a batch takes about `BATCH_S` of work (the user
never tunes a chunk size); arrays travel through shared memory (`_shm`). Workers ignore
SIGINT, die with their parent (a pipe that reaches EOF, and PR_SET_PDEATHSIG), and forward
their `logging` records to the parent.

Modules: `_protocol` (what crosses between the two sides), `_worker` (the worker program),
`_supervisor` (the parent side), `_warm` (idle workers kept for later runs), `_start` (start
methods), `_launch` (the forkserver spawned before multiprocessing is imported), `_forkserver`
(what the forkserver imports first), `_backend` (the runner's entry).

This package imports its modules on first use (``__getattr__``), and nothing at its top: the
forkserver imports the worker program, and a worker should not pay for the parent side (the
supervisor, its threads and clean-up); the parent's first process stage starts the forkserver
(`_start`) before it imports the rest, which it then does while the server boots.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import ProcessBackend
    from ._start import START_METHODS, default_start_method, prestart
    from ._supervisor import Proc, ProcessWorkers
    from ._warm import WARM, WarmWorkers, release_warm

__all__ = [
    "START_METHODS",
    "WARM",
    "Proc",
    "ProcessBackend",
    "ProcessWorkers",
    "WarmWorkers",
    "default_start_method",
    "prestart",
    "release_warm",
]

#: Name -> the module of this package that defines it, imported when the name is first used.
_LAZY = {
    "ProcessBackend": "_backend",
    "START_METHODS": "_start",
    "default_start_method": "_start",
    "prestart": "_start",
    "Proc": "_supervisor",
    "ProcessWorkers": "_supervisor",
    "WARM": "_warm",
    "WarmWorkers": "_warm",
    "release_warm": "_warm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
