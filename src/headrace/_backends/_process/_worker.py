"""The worker program: runs the stages its parent gives it, one job after another.

    parent                                      worker process
    ------                                      --------------
    Job(spec) ----------------------------->    _run_job(): ChildWork (`StageWork` over the
    Calls(chunks) ------------------------->      pipes), run_calls / run_stream (`_base`)
                   <------------------------    Results / Outputs, Log records
    End() --------------------------------->    Idle(): ready for the next job
    alive pipe: "stop" or EOF ------------->    exits at once (watcher thread)

It ignores SIGINT (Ctrl-C is the parent's), dies with its parent (EOF on the alive pipe, and
PR_SET_PDEATHSIG), writes the position of the item it calls on the shared progress board (so a
crash names the item), and forwards its `logging` records to the parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from ..._errors import format_traceback
from ..._memory import give_back_memory, keep_freed_memory
from ..._shm import (
    InSlot,
    Mapper,
    StagePool,
    attach,
    decode,
    encode,
    remove_run,
)
from ..._stages import STREAM_KINDS
from ..._transport import chunk_nbytes
from ..._types import loaded_numpy
from .._base import (
    Chunk,
    Done,
    Failure,
    Tail,
    cloudpickle_dumps,
    log_fields,
    run_calls,
    run_stream,
    set_item,
)
from ._protocol import (
    _IDLE,
    _PR_SET_PDEATHSIG,
    FLUSH_S,
    IDLE_S,
    MAX_BATCH,
    Again,
    Boxed,
    Calls,
    ChunkResult,
    Failed,
    Finished,
    Idle,
    Items,
    Job,
    Log,
    Message,
    Outputs,
    Ready,
    Results,
    SetupFailed,
    Spec,
    _dump_error,
    _failure_entry,
    _TransitError,
)

# --- the worker process ------------------------------------------------------------------------


def worker_main(tasks: Connection, results: Connection, alive: Connection, deathsig: bool) -> None:
    """The body of a worker process: run the stages it is given, one job after another; exit
    when told, when the parent is gone, or after `IDLE_S` seconds without a job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if deathsig:
        _die_with_parent()
    threading.Thread(target=_watch_parent, args=(alive,), daemon=True).start()
    # Each job keeps the memory it frees for its next items (`_memory`): forcing mmap for
    # every block above 1 MiB instead (to return freed memory at once) made each new array
    # fault in every page: 2x slower to make (benchmark W2a 0.9 -> 1.6 GB/s under load).
    try:
        while tasks.poll(IDLE_S):
            message = pickle.loads(tasks.recv_bytes())
            if not isinstance(message, Job):
                return
            _run_job(message.spec, message.slot, tasks, results)
            results.send_bytes(pickle.dumps(Idle(), protocol=5))
    except (EOFError, OSError):
        pass  # the parent closed the pipes: the run is over


def _run_job(spec: Spec, slot: int, tasks: Connection, results: Connection) -> None:
    """One stage's work in this worker, from its setup to the parent's end message."""
    global _token
    _token = spec.token
    child = ChildWork(spec, slot, tasks, results)
    logging.getLogger().handlers[:] = [PipeLogHandler(child)]
    logging.getLogger().setLevel(spec.log_level)
    kept = keep_freed_memory()  # for this job's items; given back when it ends
    try:
        try:
            child.fn = pickle.loads(spec.fn)
            if spec.tail is not None:
                child.tail = Tail(*pickle.loads(spec.tail))
                child.tail.empty = partial(child.pool.empty, holder=child.parent)
        except BaseException as exc:
            child.setup_failed(exc, format_traceback(exc))
            return
        _seed_globals()  # after the function's own imports (NumPy among them)
        if spec.kind in STREAM_KINDS:
            run_stream(child)
            child.flush()
            child.send(Finished())
        else:
            run_calls(child, mark=child.mark)
    finally:
        child.close()
        if kept:
            give_back_memory()


def _slot_names(outputs: list[tuple[Any, ...]]) -> set[str]:
    """The slots the encoded outputs of a chunk (as `ChildWork.finish` makes them) refer to."""
    names: set[str] = set()
    for _, split, data, places in outputs:
        for part in data if split else [(data, places)]:
            if part is not None:  # None: an output that could not be pickled
                names.update(name for name, _, _ in part[1])
    return names


#: The run token of the job this worker runs (its segments are removed if the parent dies).
_token: str | None = None


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        # Here: the parent imports this module (for `worker_main`) and needs no ctypes; the
        # forkserver has it loaded already (`_forkserver.die_with_parent`).
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _watch_parent(alive: Connection) -> None:
    """Exit at once when the parent says stop on this pipe, or when the pipe reaches EOF: the
    parent is gone, and this worker removes the run's shared memory on its way out."""
    try:
        alive.recv_bytes()
    except BaseException:
        with contextlib.suppress(BaseException):
            if _token is not None:
                remove_run(_token)
    os._exit(1)


def _seed_globals() -> None:
    """Distinct global `random` and NumPy legacy streams in every worker and job (a forked or
    forkserver worker would otherwise repeat its siblings' draws), from the OS's entropy:
    reproducible draws come from `hr.rng()`. NumPy only if the program loaded it (a NumPy
    imported later seeds itself from the OS)."""
    random.seed()
    np = loaded_numpy()
    if np is not None:
        np.random.seed()


class ChildWork:
    """The stage as a worker process sees it (`StageWork`): chunks come from the pipe."""

    def __init__(self, spec: Spec, slot: int, tasks: Connection, results: Connection) -> None:
        self.name = spec.name
        self.kind = spec.kind
        self.fn: Any = None
        self.tail: Tail | None = None
        self.tail_spec: bytes | None = None
        self.tail_names: list[str] = []
        self.options = spec.options
        self.ports = spec.ports
        self.position = spec.position
        self.seed = spec.seed
        self.start_method: str | None = None
        self.shm_budget = spec.budget
        self.slot = slot
        self.parent = spec.parent
        self._tasks = tasks
        self._results = results
        self._send_lock = threading.Lock()
        self.pool = StagePool(spec.token, spec.slots_budget, spec.slots)
        self._in_slot = InSlot()  # when a chunk's outputs are pickled straight into a slot
        self._out_slot = InSlot(ahead=InSlot.STREAM_AHEAD)  # a stream stage's outputs
        self.mapper = Mapper()
        self._progress = attach(spec.progress)
        # Where the worker's loop writes the position of the item it calls (see `Caller`).
        self.mark = memoryview(self._progress)[16 * slot + 8 : 16 * slot + 16].cast("q")
        self._queue: deque[Chunk] = deque()
        self._done: list[ChunkResult | Again] = []
        self._outputs: list[tuple[bytes, list[Any]]] = []
        self._first_output = 0.0
        self._key: int | None = None
        self._ready = False

    # messages

    def send(self, message: Message) -> None:
        data = pickle.dumps(message, protocol=5)
        with self._send_lock:
            self._results.send_bytes(data)

    def _recv(self) -> Message:
        message: Message = pickle.loads(self._tasks.recv_bytes())
        if type(message) is Boxed:
            # Unpickling copies the bytes out; the slot is free once the view is gone.
            message = pickle.loads(self.mapper.view(*message.place).data)
        return message

    def _mark(self, seq: int) -> None:
        struct.pack_into("<q", self._progress, 16 * self.slot, seq)

    # call stages

    def next_chunk(self, block: bool = True) -> Chunk | None:
        if not self._ready:
            self._ready = True
            self.send(Ready())  # set up: a timed item's clock may start
        while True:
            if not self._queue:
                self._mark(_IDLE)
                if self._done:
                    self.send(Results(self._done))
                    self._done = []
                message = self._recv()
                if not isinstance(message, Calls):
                    return None
                for seq, keys, split, data, places, base in message.entries:
                    chunk = self._unpack(seq, keys, split, data, places)
                    if chunk is not None:
                        chunk.base = base
                        self._queue.append(chunk)
                continue
            chunk = self._queue.popleft()
            self._mark(chunk.seq)
            return chunk

    def _unpack(
        self, seq: int, keys: Sequence[int], split: bool, data: Any, places: list[Any]
    ) -> Chunk | None:
        """The chunk a message entry carries; None when it could not be unpickled whole (the
        parent then sends it again item by item, to find the item)."""
        if not split:
            try:
                values = decode(data, places, self.mapper)
            except BaseException:
                self._done.append(Again(seq))
                return None
            return Chunk(seq, keys, values, split=False)
        good_keys, good_values, failures = [], [], []
        for key, part in zip(keys, data, strict=True):
            try:
                good_values.append(decode(part[0], part[1], self.mapper))
                good_keys.append(key)
            except BaseException as exc:
                error = _TransitError(f"item {key} could not be unpickled in the worker", exc)
                failures.append(Failure(key, error, format_traceback(exc)))
        return Chunk(seq, good_keys, good_values, failures=failures, split=True)

    def finish(self, done: Done) -> None:
        chunk = done.chunk
        tail = None
        if self.tail is not None:
            tail = [
                (f.items_in, f.completed, f.dropped, list(map(_failure_entry, f.errors)), f.busy_s)
                for f in self.tail.run(done)
            ]
        errors = [_failure_entry(f) for f in chunk.failures + done.errors]
        nbytes = sum(chunk_nbytes(values) for _, values in done.outputs)
        outputs: list[tuple[Any, ...]] = []
        if not chunk.split:
            try:
                for keys, values in done.outputs:
                    encoded = self._in_slot.encode(values, len(values), self.pool, self.parent)
                    if encoded is None:
                        encoded = encode(values, self.pool, self.parent, cloudpickle_dumps)
                        self._in_slot.learn(*encoded, len(values))
                    outputs.append((keys, False, *encoded))
            except BaseException:
                outputs = []
                chunk.split = True
        completed = done.completed
        if chunk.split:  # one by one: an output that cannot be pickled fails its item only
            outputs, bad = [], set()
            for keys, values in done.outputs:
                parts: list[Any] = []
                for key, value in zip(keys, values, strict=True):
                    try:
                        parts.append(encode(value, self.pool, self.parent, cloudpickle_dumps))
                    except BaseException as exc:
                        parts.append(None)
                        if key not in bad:
                            bad.add(key)
                            error = _TransitError(
                                f"the result of item {key} could not be pickled", exc
                            )
                            errors.append(
                                _failure_entry(Failure(key, error, format_traceback(exc)))
                            )
                outputs.append((keys, True, parts, []))
            completed -= len(bad)
        if tail is not None:  # the batches the tail wrote in slots: those not sent are free
            self.pool.settle(_slot_names(outputs))
        self._done.append(
            ChunkResult(
                chunk.seq, outputs, completed, done.dropped, errors, done.busy_s, tail, nbytes
            )
        )
        # The outputs are copied out: let go of them (and the input) now, not when the loop
        # takes the next chunk, which may wait for the parent; an 8 MiB result is 8 MiB held.
        done.outputs = []
        chunk.values = []

    # stream stages

    def stream_inputs(self) -> Iterator[Any]:
        while True:
            if self._outputs and not self._tasks.poll():
                self.flush()  # about to wait: what is made so far goes out first
            message = self._recv()
            if not isinstance(message, Items):
                return
            keys, data, places = message
            for key, value in zip(keys, decode(data, places, self.mapper), strict=True):
                self._key = key
                set_item(self.seed, self.position, key)
                yield value

    def emit(self, value: Any) -> None:
        if not self._outputs:
            self._first_output = time.monotonic()
        in_slot = self._out_slot.encode(value, 1, self.pool, self.parent)
        if in_slot is None:
            try:
                encoded = encode(value, self.pool, self.parent, cloudpickle_dumps)
            except Exception as exc:  # the parent makes it a SerializationError naming the stage
                after = "" if self._key is None else f" (after item {self._key})"
                raise _TransitError(f"an output could not be pickled{after}", exc) from exc
            self._out_slot.learn(*encoded, 1)
        self._outputs.append(encoded if in_slot is None else in_slot)
        if (
            in_slot is not None  # a large output: it waits for no others (its slot is held)
            or len(self._outputs) >= MAX_BATCH
            or time.monotonic() - self._first_output > FLUSH_S
        ):
            self.flush()

    def flush(self) -> None:
        if self._outputs:
            outputs, self._outputs = self._outputs, []
            self.send(Outputs(outputs))

    def forward(self) -> None:
        raise AssertionError("pass-through stages run in the parent")

    def stream_chunks(self) -> Iterator[tuple[Sequence[int], list[Any]]]:
        raise AssertionError("a worker process reads its items from the pipe")

    def stream_failed(self, error: BaseException, tb: str) -> None:
        self.flush()
        self.send(Failed(_dump_error(error), tb, self._key))

    def setup_failed(self, error: BaseException, tb: str, key: int | None = None) -> None:
        self.send(SetupFailed(_dump_error(error), tb))

    def worker_exited(self) -> None:
        pass

    def close(self) -> None:
        """The job is over: let go of its shared memory (the parent removes the files)."""
        self.mark.release()
        with contextlib.suppress(BufferError, ValueError):
            self._progress.close()
        self.pool.close()
        self.mapper.close()

    def on_cancel(self, callback: Any) -> None:
        pass

    def set_window(self, chunks: int) -> None:
        pass


class PipeLogHandler(logging.Handler):
    """Sends a worker's log records to the parent, which hands them to its own handlers."""

    def __init__(self, child: ChildWork) -> None:
        super().__init__()
        self._child = child

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._child.send(Log(log_fields(record)))
        except Exception:
            self.handleError(record)
