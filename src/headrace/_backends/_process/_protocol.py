"""What crosses between the parent and a worker process: the spec of a stage, the error
codec, and the numbers both sides use. Imported by both; imports neither.

    parent -> worker (task pipe):   ("job", Spec, slot, incarnation), ("calls", [chunk entry]),
                                    ("items", (keys, data, places)) for stream stages, ("end",)
    worker -> parent (result pipe): ("ready",), ("done", [done entry]), ("out", [outputs]),
                                    ("log", record), ("failed" | "setup", error, traceback),
                                    ("finished",), ("idle",)

A chunk entry is (seq, keys, split, data, places): the chunk's values in one pickle (arrays out
of band in shared memory), or one pickle per item when ``split``. A done entry is (seq, "done",
outputs per port, completed, dropped, errors, busy seconds), or (seq, "again") when the worker
could not unpickle the chunk whole.
"""

from __future__ import annotations

import logging
import os

from ..._errors import shorten
from .._base import (
    Failure,
    StageWork,
    dump_callable,
    dump_error,
    load_error,
)

# The error codec lives in `_base` (the Ray backend shares it); the old names stay here.
_dump_error = dump_error
_load_error = load_error

#: Seconds of work a batch of small items should take: long enough to pay for a pipe round
#: trip, short enough that a slow stream still delivers promptly.
BATCH_S = 0.005
#: Outputs a stream-stage worker gathers into one message at most.
MAX_BATCH = 256
#: Batches a worker may hold: one running, one queued behind it so it never waits for the
#: parent. Items whose results are large (>= BIG_RESULT bytes) go one at a time: a round trip
#: is cheap next to making them, and each one held costs memory.
DEPTH = 2
BIG_RESULT = 2**20
#: A chunk this slow (seconds) goes to a worker only when it is idle (see `_learn`).
SLOW_CHUNK_S = 0.05
#: Array bytes a process stage may hold in flight, beyond one item per worker.
WINDOW_BYTES = 16 * 2**20
#: Bytes each pipe to and from a worker is asked to hold (Linux: F_SETPIPE_SZ, within
#: /proc/sys/fs/pipe-max-size, 1 MiB by default), so that a chunk of small items fits.
PIPE_BYTES = 2**20
#: A message larger than this is sent only to an idle worker: a pipe holds 64 KiB unless it
#: grows, and a worker blocked writing its results must never wait on a parent blocked
#: writing tasks. Raised to half the pipe's size when the pipes grow.
PIPE_SAFE = 32 * 1024
#: A crash loop: this many worker deaths within CRASH_WINDOW_S seconds.
CRASH_LOOP = 5
CRASH_WINDOW_S = 10.0
#: Seconds an idle worker waits for another job before it exits (loky keeps its reusable
#: workers 300 s; a pipeline program usually runs its next stage within seconds).
IDLE_S = 60.0
#: A worker idle for longer than IDLE_S - IDLE_MARGIN_S is not handed out: it may be exiting.
IDLE_MARGIN_S = 5.0
#: Idle workers kept per start method, at most (more are stopped when given back).
MAX_WARM = max(4, 2 * (os.cpu_count() or 1))
#: Seconds a worker gets to exit after being told to stop, before SIGTERM, then SIGKILL.
STOP_GRACE_S = 0.2
#: How long a worker flushes its transform outputs at the latest.
FLUSH_S = 0.005
START_METHODS = ("forkserver", "spawn", "fork")
ENV_START_METHOD = "HEADRACE_START_METHOD"
_PR_SET_PDEATHSIG = 1
_M_MMAP_THRESHOLD = -3
_IDLE = -1


# --- what a worker is sent ---------------------------------------------------------------------


class Spec:
    """Everything a worker needs, pickled with the start method's pickler."""

    def __init__(self, work: StageWork, token: str, budget: int, progress: str) -> None:
        self.name = work.name
        self.kind = work.kind
        self.fn = dump_callable(work.name, work.fn)
        self.options = work.options
        self.ports = work.ports
        self.position = work.position
        self.seed = work.seed
        self.token = token
        self.budget = budget
        self.progress = progress
        self.parent = os.getpid()
        self.log_level = logging.getLogger().getEffectiveLevel()


class _TransitError(Exception):
    """An item or result that could not cross between processes."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: {type(cause).__name__}: {shorten(str(cause), 300)}")


def _failure_entry(failure: Failure) -> tuple[int, bytes, str]:
    return (failure.key, _dump_error(failure.error), failure.traceback)
