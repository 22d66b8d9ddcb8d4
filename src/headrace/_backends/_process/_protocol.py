"""What crosses between the parent and a worker process: the spec of a stage, the error
codec, and the numbers both sides use. Imported by both; imports neither.

    parent -> worker (task pipe):   Job, Calls (of CallEntry), Items (stream stages), End;
                                    Boxed: one of these, too large for the pipe, in a slot
    worker -> parent (result pipe): Ready, Results (of ChunkResult or Again), Outputs (stream
                                    stages), Log, Failed, SetupFailed, Finished, Idle

Each message is a named tuple (one pickle per message, by protocol 5). A `CallEntry` carries a
chunk's values in one pickle (arrays out of band in shared memory), or one pickle per item when
``split``. A `ChunkResult` carries a chunk's outputs per port, its counts, its error entries, the
seconds it took and its outputs' bytes of array data; `Again` asks for a chunk the worker could
not unpickle whole, item by item.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..._errors import shorten
from .._base import (
    Failure,
    StageWork,
    dump_callable,
    dump_error,
    load_error,
)

# The error codec and the function's pickler live in `_base` (the Ray backend shares them);
# the names this package used stay here.
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
_PR_SET_PDEATHSIG = 1
_IDLE = -1


# --- what a worker is sent ---------------------------------------------------------------------


# --- the messages -----------------------------------------------------------------------------
# parent -> worker


class Job(NamedTuple):
    """Run this stage, as worker ``slot`` of it."""

    spec: Spec
    slot: int


class CallEntry(NamedTuple):
    """One chunk for a call stage: its values in one pickle (``data`` and the shared-memory
    ``places`` of its arrays), or one ``(data, places)`` per item when ``split``."""

    seq: int
    keys: Sequence[int]
    split: bool
    data: Any
    places: list[Any]
    base: int = -1  # `Chunk.base`: where its outputs start in a batch the worker makes


class Calls(NamedTuple):
    entries: list[CallEntry]


class Items(NamedTuple):
    """Inputs of a stream stage (``transform``)."""

    keys: Sequence[int]
    data: bytes
    places: list[Any]


class End(NamedTuple):
    """No more input: finish the job and say `Idle`."""


class Boxed(NamedTuple):
    """A message larger than the pipe holds (a chunk of large records), pickled into a
    shared-memory slot of the parent's: ``place`` is ``(slot, offset, length)``. The pipe then
    carries only this, so the next chunk can be queued behind a running one (a large message
    written to a busy worker would have to wait until it reads) and the bytes cross once."""

    place: tuple[str, int, int]


# worker -> parent


class Ready(NamedTuple):
    """Set up (the function is loaded): a timed item's clock may start."""


class ChunkResult(NamedTuple):
    """A chunk done: per port ``(keys, split, data, places)``; error entries
    ``(key, error, traceback)``; seconds of work."""

    seq: int
    outputs: list[tuple[Any, ...]]
    completed: int
    dropped: int
    errors: list[tuple[Any, ...]]
    busy_s: float
    #: Per stage of the worker's tail: ``(items_in, completed, dropped, errors, busy_s)``.
    tail: list[tuple[Any, ...]] | None = None
    #: Bytes of array data in the outputs (`chunk_nbytes`), counted here, where the worker
    #: scans its own outputs, so that the parent need not (-1: not counted).
    nbytes: int = -1


class Again(NamedTuple):
    """The chunk could not be unpickled whole: send it again item by item."""

    seq: int


class Results(NamedTuple):
    entries: list[ChunkResult | Again]


class Outputs(NamedTuple):
    """Outputs of a stream stage, each ``(data, places)``."""

    outputs: list[tuple[bytes, list[Any]]]


class Log(NamedTuple):
    """A `logging` record's fields."""

    fields: dict[str, Any]


class Failed(NamedTuple):
    """A stream stage failed (``key``: the item it was on)."""

    error: bytes
    traceback: str
    key: int | None


class SetupFailed(NamedTuple):
    """The stage's function could not be loaded or instantiated."""

    error: bytes
    traceback: str


class Finished(NamedTuple):
    """A stream stage's outputs are all sent."""


class Idle(NamedTuple):
    """The job is over and the worker healthy: it waits for another `Job`."""


Message = (
    Job
    | Calls
    | Items
    | End
    | Boxed
    | Ready
    | Results
    | Outputs
    | Log
    | Failed
    | SetupFailed
    | Finished
    | Idle
)


class Spec:
    """Everything a worker needs, pickled with the start method's pickler."""

    def __init__(
        self, work: StageWork, token: str, budget: int, progress: str, tail: bytes | None = None
    ) -> None:
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
        #: The slot directory the stage's workers share (`_shm.StagePool`), with the budget of
        #: all of them: each worker may use what another one does not.
        self.slots = f"hr-{token}-slots"
        self.slots_budget = budget * work.options.workers
        self.parent = os.getpid()
        self.log_level = logging.getLogger().getEffectiveLevel()
        #: The pickled `Tail` arguments: stages the worker runs on its outputs (or None).
        self.tail = tail


class _TransitError(Exception):
    """An item or result that could not cross between processes, as a worker reports it (the
    parent makes it a `SerializationError` naming the stage, with ``cause`` as its cause)."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: {type(cause).__name__}: {shorten(str(cause), 300)}")
        self.cause = cause


def _failure_entry(failure: Failure) -> tuple[int, bytes, str]:
    return (failure.key, _dump_error(failure.error), failure.traceback)
