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
methods), `_forkserver` (what the forkserver imports first).
"""

from __future__ import annotations

from ..._stages import StageOptions
from .._base import Backend, StageWork, Workers
from ._protocol import BATCH_S, DEPTH, START_METHODS, WINDOW_BYTES
from ._start import default_start_method, prestart
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


class ProcessBackend(Backend):
    name = "process"
    runs_tail = True

    def start(self, work: StageWork) -> Workers:
        return ProcessWorkers(work)

    chunk_s = BATCH_S

    def window(self, options: StageOptions) -> tuple[int, int | None]:
        if options.timeout is not None:
            return 2 * options.workers, WINDOW_BYTES
        return (DEPTH + 1) * options.workers, WINDOW_BYTES
