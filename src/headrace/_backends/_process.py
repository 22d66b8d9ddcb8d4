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
queued behind it are sent again, and a fresh process takes its slot. A crash loop (the same
item crashing twice, or `CRASH_LOOP` crashes within `CRASH_WINDOW_S`) ends the run with one
error. With ``timeout=`` a worker holds one item at a time; when the item runs late the worker
is killed and replaced.

Small items travel in batches sized so that a batch takes about `BATCH_S` of work (the user
never tunes a chunk size); arrays travel through shared memory (`_shm`). Workers ignore
SIGINT, die with their parent (a pipe that reaches EOF, and PR_SET_PDEATHSIG), and forward
their `logging` records to the parent. Imports `_base`, `_shm`, `_transport`, `_errors`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import random
import signal
import struct
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
import numpy as np

from .._errors import RemoteError, WorkerCrashedError, format_traceback, shorten
from .._shm import (
    HEADER,
    Mapper,
    SlotPool,
    attach,
    create,
    decode,
    encode,
    remove_run,
    run_token,
    sweep_stale,
)
from .._stages import STREAM_KINDS, StageOptions
from .._transport import Cancelled, StopStage
from . import _forkserver
from ._base import (
    Backend,
    Chunk,
    Done,
    Failure,
    StageWork,
    Workers,
    run_calls,
    run_stream,
    set_item,
    timeout_error,
)

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


def default_start_method() -> str:
    """The start method when none is given: $HEADRACE_START_METHOD, else the one that is safe
    with threads (forkserver where it exists, spawn elsewhere)."""
    method = os.environ.get(ENV_START_METHOD)
    if method:
        if method not in START_METHODS:
            raise ValueError(f"${ENV_START_METHOD} must be one of {START_METHODS}, got {method!r}")
        return method
    if "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def _context(method: str) -> Any:
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"start_method {method!r} is not available here")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        from multiprocessing import forkserver

        if getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
            # Workers fork from a server that has imported headrace and numpy once, and that
            # dies with this program (see `_forkserver`) when its main thread starts it.
            if threading.current_thread() is threading.main_thread():
                os.environ[_forkserver.PARENT_ENV] = str(os.getpid())
            else:
                os.environ.pop(_forkserver.PARENT_ENV, None)
            ctx.set_forkserver_preload([_forkserver.__name__, "__main__", __name__])
    elif method == "fork":
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:
            warnings.warn(
                f"start_method='fork' with other threads running ({', '.join(others[:5])}): a "
                "forked worker may deadlock on a lock one of them held. Use 'forkserver'.",
                RuntimeWarning,
                stacklevel=6,
            )
    return ctx


class ProcessBackend(Backend):
    name = "process"

    def start(self, work: StageWork) -> Workers:
        return ProcessWorkers(work)

    chunk_s = BATCH_S

    def window(self, options: StageOptions) -> tuple[int, int | None]:
        if options.timeout is not None:
            return 2 * options.workers, WINDOW_BYTES
        return (DEPTH + 1) * options.workers, WINDOW_BYTES


# --- what a worker is sent ---------------------------------------------------------------------


def dump_callable(name: str, fn: Any) -> bytes:
    """The stage function as bytes for the workers; a clear TypeError if it cannot be sent."""
    try:
        return bytes(cloudpickle.dumps(fn, protocol=5))
    except Exception as exc:
        raise TypeError(
            f"stage {name!r}: its function {shorten(repr(fn), 120)} cannot be sent to a worker "
            f"process: {type(exc).__name__}: {shorten(str(exc), 300)}. Make what it refers to "
            "picklable (e.g. open files or locks inside the function, or in a class's "
            "__init__), or use backend='thread'."
        ) from exc


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


# --- the worker process ------------------------------------------------------------------------


def worker_main(tasks: Connection, results: Connection, alive: Connection, deathsig: bool) -> None:
    """The body of a worker process: run the stages it is given, one job after another; exit
    when told, when the parent is gone, or after `IDLE_S` seconds without a job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if deathsig:
        _die_with_parent()
    _return_freed_memory()
    threading.Thread(target=_watch_parent, args=(alive,), daemon=True).start()
    try:
        while tasks.poll(IDLE_S):
            message = pickle.loads(tasks.recv_bytes())
            if message[0] != "job":
                return
            _run_job(message[1], message[2], message[3], tasks, results)
            results.send_bytes(pickle.dumps(("idle",), protocol=5))
    except (EOFError, OSError):
        pass  # the parent closed the pipes: the run is over


def _run_job(
    spec: Spec, slot: int, incarnation: int, tasks: Connection, results: Connection
) -> None:
    """One stage's work in this worker, from its setup to the parent's end message."""
    global _token
    _token = spec.token
    child = ChildWork(spec, slot, tasks, results)
    _seed_globals(spec.seed, spec.position, slot, incarnation)
    logging.getLogger().handlers[:] = [PipeLogHandler(child)]
    logging.getLogger().setLevel(spec.log_level)
    try:
        try:
            child.fn = cloudpickle.loads(spec.fn)
        except BaseException as exc:
            child.setup_failed(exc, format_traceback(exc))
            return
        if spec.kind in STREAM_KINDS:
            run_stream(child)
            child.flush()
            child.send(("finished",))
        else:
            run_calls(child, mark=child.mark)
    finally:
        child.close()


#: The run token of the job this worker runs (its segments are removed if the parent dies).
_token: str | None = None


def _return_freed_memory() -> None:
    """Large blocks come from mmap and go back to the system when freed. glibc otherwise raises
    its mmap threshold after the first free, and a worker making 8 MiB arrays keeps 8-16 MiB
    of freed heap for good (the "worker whose memory grows")."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 2**20)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
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


def _seed_globals(seed: int, position: int, slot: int, incarnation: int) -> None:
    """Distinct global `random` and NumPy legacy streams in every worker (a forked or
    forkserver worker would otherwise repeat its siblings' draws)."""
    sequence = np.random.SeedSequence([seed, position, slot, incarnation, os.getpid()])
    state = sequence.generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))


class ChildWork:
    """The stage as a worker process sees it (`StageWork`): chunks come from the pipe."""

    def __init__(self, spec: Spec, slot: int, tasks: Connection, results: Connection) -> None:
        self.name = spec.name
        self.kind = spec.kind
        self.fn: Any = None
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
        self.pool = SlotPool(spec.token, spec.budget)
        self.mapper = Mapper()
        self._progress = attach(spec.progress)
        # Where the worker's loop writes the position of the item it calls (see `Caller`).
        self.mark = memoryview(self._progress)[16 * slot + 8 : 16 * slot + 16].cast("q")
        self._queue: deque[Chunk] = deque()
        self._done: list[tuple[Any, ...]] = []
        self._outputs: list[tuple[bytes, list[Any]]] = []
        self._first_output = 0.0
        self._key: int | None = None
        self._ready = False

    # messages

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=5)
        with self._send_lock:
            self._results.send_bytes(data)

    def _recv(self) -> tuple[Any, ...]:
        message: tuple[Any, ...] = pickle.loads(self._tasks.recv_bytes())
        return message

    def _mark(self, seq: int) -> None:
        struct.pack_into("<q", self._progress, 16 * self.slot, seq)

    # call stages

    def next_chunk(self, block: bool = True) -> Chunk | None:
        if not self._ready:
            self._ready = True
            self.send(("ready",))  # set up: a timed item's clock may start
        while True:
            if not self._queue:
                self._mark(_IDLE)
                if self._done:
                    self.send(("done", self._done))
                    self._done = []
                message = self._recv()
                if message[0] != "calls":
                    return None
                for seq, keys, split, data, places in message[1]:
                    chunk = self._unpack(seq, keys, split, data, places)
                    if chunk is not None:
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
                self._done.append((seq, "again"))
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
        errors = [_failure_entry(f) for f in chunk.failures + done.errors]
        outputs: list[tuple[Any, ...]] = []
        if not chunk.split:
            try:
                for keys, values in done.outputs:
                    data, places = encode(values, self.pool, self.parent, cloudpickle.dumps)
                    outputs.append((keys, False, data, places))
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
                        parts.append(encode(value, self.pool, self.parent, cloudpickle.dumps))
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
        self._done.append(
            (chunk.seq, "done", outputs, completed, done.dropped, errors, done.busy_s)
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
            if message[0] != "items":
                return
            keys, data, places = message[1]
            for key, value in zip(keys, decode(data, places, self.mapper), strict=True):
                self._key = key
                set_item(self.seed, self.position, key)
                yield value

    def emit(self, value: Any) -> None:
        if not self._outputs:
            self._first_output = time.monotonic()
        self._outputs.append(encode(value, self.pool, self.parent, cloudpickle.dumps))
        if len(self._outputs) >= MAX_BATCH or time.monotonic() - self._first_output > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._outputs:
            outputs, self._outputs = self._outputs, []
            self.send(("out", outputs))

    def forward(self) -> None:
        raise AssertionError("pass-through stages run in the parent")

    def stream_chunks(self) -> Iterator[tuple[Sequence[int], list[Any]]]:
        raise AssertionError("a worker process reads its items from the pipe")

    def stream_failed(self, error: BaseException, tb: str) -> None:
        self.flush()
        self.send(("failed", _dump_error(error), tb, self._key))

    def setup_failed(self, error: BaseException, tb: str, key: int | None = None) -> None:
        self.send(("setup", _dump_error(error), tb))

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


class _TransitError(Exception):
    """An item or result that could not cross between processes."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: {type(cause).__name__}: {shorten(str(cause), 300)}")


def _dump_error(error: BaseException) -> bytes:
    """The exception as bytes for the parent: the exception itself when it pickles whole; else
    its class, args and the attributes that pickle, to rebuild it without calling
    ``__init__`` (a class whose ``__init__`` does not take its ``args`` is common); with its
    type name and message, for a `RemoteError` when even the class cannot travel."""
    name = f"{type(error).__module__}.{type(error).__qualname__}"
    message = shorten(str(error))
    payload: bytes | None = None
    try:
        payload = bytes(cloudpickle.dumps(error, protocol=5))
        pickle.loads(payload)  # rebuilding fails for e.g. a class whose __init__ takes 2 args
    except BaseException:
        state = {k: v for k, v in vars(error).items() if _pickles(v)}
        try:
            payload = bytes(cloudpickle.dumps((_REBUILD, type(error), error.args, state), 5))
        except BaseException:
            payload = None
    return pickle.dumps((payload, name, message), protocol=5)


_REBUILD = "headrace-rebuild"


def _pickles(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
    except BaseException:
        return False
    return True


def _failure_entry(failure: Failure) -> tuple[int, bytes, str]:
    return (failure.key, _dump_error(failure.error), failure.traceback)


class PipeLogHandler(logging.Handler):
    """Sends a worker's log records to the parent, which hands them to its own handlers."""

    def __init__(self, child: ChildWork) -> None:
        super().__init__()
        self._child = child

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["exc_info"] = None
            fields = {k: v for k, v in fields.items() if _picklable(v)}
            self._child.send(("log", fields))
        except Exception:
            self.handleError(record)


def _grow_pipe(conn: Connection) -> int:
    """Ask for a pipe of `PIPE_BYTES`; the bytes it holds now."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return int(fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ))
    except (ImportError, AttributeError, OSError):
        return 2 * PIPE_SAFE


def _picklable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | tuple)


# --- the parent side ---------------------------------------------------------------------------


class Proc:
    """One worker process as its supervisor holds it."""

    def __init__(self, ctx: Any, method: str) -> None:
        self.method = method
        self.tasks_r, self.tasks = ctx.Pipe(duplex=False)
        self.results, self.results_w = ctx.Pipe(duplex=False)
        alive_r, self.alive = ctx.Pipe(duplex=False)
        self.pipe_bytes = min(_grow_pipe(self.tasks), _grow_pipe(self.results))
        deathsig = method == "forkserver" or (threading.current_thread() is threading.main_thread())
        self.process = ctx.Process(
            target=worker_main,
            args=(self.tasks_r, self.results_w, alive_r, deathsig),
            name="headrace-worker",
            daemon=False,  # a worker may run a process pipeline of its own
        )
        self.process.start()
        for end in (self.tasks_r, self.results_w, alive_r):
            end.close()
        self.pid = self.process.pid or 0
        self.sentinel = self.process.sentinel
        self.slot = 0
        self.ready = False  # the worker has set up and asks for its first item
        self.idle_since = 0.0
        self._exitcode: int | None = None

    def start_job(self, spec: Spec, slot: int, incarnation: int) -> None:
        """Give the worker a stage to run (as worker ``slot`` of it)."""
        self.slot = slot
        self.ready = False
        self.tasks.send_bytes(pickle.dumps(("job", spec, slot, incarnation), protocol=5))

    def send(self, message: tuple[Any, ...]) -> None:
        self.tasks.send_bytes(pickle.dumps(message, protocol=5))

    def stop(self, grace: float) -> None:
        """Ask the worker to end, then escalate: SIGTERM, SIGKILL."""
        with contextlib.suppress(OSError, ValueError):
            self.alive.send_bytes(b"stop")  # the worker's watcher exits it at once
        with contextlib.suppress(OSError, ValueError):
            self.alive.close()
        self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        self.close_pipes()
        if not self.process.is_alive():
            self._exitcode = self.process.exitcode
            with contextlib.suppress(ValueError):
                self.process.close()  # its sentinel's fd now, not when garbage is collected

    @property
    def exitcode(self) -> int | None:
        if self._exitcode is not None:
            return self._exitcode
        with contextlib.suppress(ValueError):
            code: int | None = self.process.exitcode
            return code
        return None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()

    def close_pipes(self) -> None:
        for conn in (self.tasks, self.results, self.alive):
            with contextlib.suppress(OSError):
                conn.close()

    def describe_exit(self) -> str:
        code = self.exitcode
        if code is None:
            return "is gone"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
            return f"was killed by signal {-code}"
        return f"exited with code {code}"


class ProcessWorkers(Workers):
    """The worker processes of one stage and their supervisor threads."""

    def __init__(self, work: StageWork) -> None:
        self.work = work
        self.method = work.start_method or default_start_method()
        self.ctx = _context(self.method)
        _sweep_once()
        self.token = run_token()
        budget = work.shm_budget
        progress = f"hr-{self.token}-progress"
        self.spec = Spec(work, self.token, budget, progress)  # fails first if fn cannot travel
        self._progress = _create_progress(progress, work.options.workers)
        self.pool = SlotPool(self.token, budget)
        self.mapper = Mapper()
        self._lock = threading.Lock()
        self._procs: dict[int, Proc] = {}
        self._feeders: list[threading.Thread] = []
        self._incarnations = [0] * work.options.workers
        self._crash_times: deque[tuple[float, int]] = deque()  # when, which item
        self._crashes: dict[int, int] = {}  # item index -> times it crashed (or ran late)
        self._avg_bytes: float | None = None
        self.pipe_safe = PIPE_SAFE
        self._ended = 0  # supervisor threads that have ended
        self._joined = False  # a close gave up on a supervisor thread
        self._big = False
        self.closing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._finalizer = multiprocessing.util.Finalize(
            self, _kill_all, args=(self._procs, self.token), exitpriority=100
        )
        try:  # here, in the thread that starts the run: a failure to start raises to it
            procs = [self._start_first(slot) for slot in range(work.options.workers)]
        except BaseException:
            _kill_all(self._procs, self.token)
            self._cleanup()
            raise
        work.on_cancel(self.wake)
        self._threads = [
            threading.Thread(
                target=self._supervise,
                args=(slot, proc),
                name=f"headrace-{work.name}-{slot}",
                daemon=True,
            )
            for slot, proc in enumerate(procs)
        ]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Wake every supervisor from its wait (the run is cancelled or closing)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def cancelled(self) -> bool:
        return self.closing or _cancelled(self.work)

    # --- starting and stopping workers --------------------------------------------------

    def _start(self, slot: int) -> Proc:
        """A worker for ``slot``: a warm one left idle by an earlier run, or a new one."""
        self._incarnations[slot] += 1
        proc = WARM.take(self.method) or Proc(self.ctx, self.method)
        self.pipe_safe = max(PIPE_SAFE, proc.pipe_bytes // 2)
        with self._lock:
            self._procs[slot] = proc
        # One that died while idle shows in its sentinel; the supervisor replaces it.
        with contextlib.suppress(OSError):
            proc.start_job(self.spec, slot, self._incarnations[slot])
        return proc

    def _start_first(self, slot: int) -> Proc:
        """Start a worker; if the forkserver cannot start (e.g. its socket path in a long
        $TMPDIR is too long), say so and use spawn."""
        try:
            return self._start(slot)
        except OSError as exc:
            if self.method != "forkserver":
                raise
            warnings.warn(
                f"headrace: the forkserver could not start ({exc}); starting workers with "
                "'spawn' instead (slower to start). A shorter $TMPDIR fixes it.",
                RuntimeWarning,
                stacklevel=2,
            )
            self.method = "spawn"
            self.ctx = _context("spawn")
            return self._start(slot)

    def _retire(self, proc: Proc, grace: float) -> None:
        proc.stop(grace)
        self.pool.release_held_by(proc.pid)

    # --- supervising one worker ---------------------------------------------------------

    def _supervise(self, slot: int, proc: Proc) -> None:
        idle = False  # the worker finished its job cleanly and waits for another
        try:
            if self.work.kind in STREAM_KINDS:
                idle = self._run_stream(proc)
            else:
                idle = self._run_calls(slot, proc)
        except (Cancelled, StopStage):
            pass
        except BaseException as exc:  # e.g. a replacement worker that cannot start
            if not self.cancelled():
                with contextlib.suppress(Cancelled):
                    self.work.setup_failed(exc, format_traceback(exc), None)
        finally:
            with self._lock:
                proc = self._procs.get(slot, proc)
                if idle and not self.closing:  # a healthy worker: keep it for a later run
                    del self._procs[slot]
                    proc.ready = False
                else:
                    idle = False
            if idle:
                self.pool.release_held_by(proc.pid)
                WARM.give(proc)
            else:
                self._retire(proc, 0.0 if self.cancelled() else 1.0)
            self.work.worker_exited()
            with self._lock:
                self._ended += 1
                last = self._ended == len(self._threads) and self._joined
            if last:  # a close gave up waiting for this thread: finish its clean-up now
                self._cleanup()

    def _run_calls(self, slot: int, proc: Proc) -> bool:
        work = self.work
        timed = work.options.timeout is not None
        held: dict[int, Chunk] = {}  # seq -> chunk the worker holds, in the order sent
        sent: deque[tuple[list[int], float]] = deque()  # messages sent: seqs, time sent
        again: deque[Chunk] = deque()  # chunks to send (again): a dead worker's, split ones
        held_back: Chunk | None = None  # a large chunk waiting for an idle worker
        ended = False
        while True:
            if self.cancelled():
                return False
            depth = 1 if timed or self._big else DEPTH
            while len(sent) < depth and (proc.ready or not timed):
                if held_back is not None:
                    if sent:
                        break
                    chunk, held_back = held_back, None
                elif again:
                    chunk = again.popleft()
                elif not ended:
                    taken = work.next_chunk(block=not sent)
                    if taken is None:
                        ended = True
                        break
                    if taken is False:
                        break
                    assert isinstance(taken, Chunk)
                    chunk = taken
                else:
                    break
                message = self._calls_message(chunk, proc.pid)
                if message is None:
                    continue
                if len(message) > self.pipe_safe and sent:
                    held_back = chunk
                    break
                held[chunk.seq] = chunk
                sent.append(([chunk.seq], time.monotonic()))
                with contextlib.suppress(OSError):  # a dead worker shows in its sentinel
                    proc.tasks.send_bytes(message)
            if not sent and (proc.ready or not timed):
                if ended and not again and held_back is None:
                    with contextlib.suppress(OSError):
                        proc.send(("end",))
                    return self._await_idle(proc)
                continue
            timeout = None
            if timed and sent:
                assert work.options.timeout is not None
                timeout = max(0.0, sent[0][1] + work.options.timeout - time.monotonic())
            ready: list[Any] = multiprocessing.connection.wait(
                [proc.results, proc.sentinel, self._wake_r], timeout
            )
            if proc.results in ready or (proc.sentinel in ready and proc.results.poll()):
                try:
                    message = pickle.loads(proc.results.recv_bytes())
                except (EOFError, OSError):
                    message = None
                if message is not None:
                    self._handle(proc, message, held, sent, again)
                    continue
            if proc.sentinel in ready or (not ready and timed and sent):
                late = not ready
                proc = self._replace(slot, proc, held, sent, again, late)
                continue
            if self._wake_r in ready and self.cancelled():
                return False

    def _await_idle(self, proc: Proc) -> bool:
        """After the end of its input: True once the worker says it is idle (healthy, ready
        for another job), False if it dies or takes too long. (The run closing meanwhile is
        no reason to stop waiting: it closes as soon as its last item is out.)"""
        deadline = time.monotonic() + STOP_GRACE_S * 10
        while (left := deadline - time.monotonic()) > 0 and not self.closing:
            ready = multiprocessing.connection.wait([proc.results, proc.sentinel], left)
            if proc.results in ready:
                try:
                    message = pickle.loads(proc.results.recv_bytes())
                except (EOFError, OSError):
                    return False
                if message[0] == "idle":
                    return True
                if message[0] == "log":
                    self._log(proc, message[1])
                continue
            if proc.sentinel in ready:
                return False
        return False

    def _calls_message(self, chunk: Chunk, pid: int) -> bytes | None:
        """The pipe message for ``chunk``: its values in one pickle, or (a split chunk) one
        pickle per item. Items that cannot be pickled are settled as failures at once, and the
        chunk is sent without them (or finished, if none is left)."""
        if not chunk.values:
            self.work.finish(Done(chunk, [([], []) for _ in range(self.work.ports)], 0))
            return None
        if not chunk.split:
            try:
                data, places = encode(chunk.values, self.pool, pid, cloudpickle.dumps)
            except Exception:
                chunk.split = True
            else:
                return pickle.dumps(("calls", [(chunk.seq, chunk.keys, False, data, places)]), 5)
        parts, keys, values = [], [], []
        for key, value in zip(chunk.keys, chunk.values, strict=True):
            try:
                parts.append(encode(value, self.pool, pid, cloudpickle.dumps))
            except Exception as exc:
                error = _TransitError(f"item {key} could not be pickled", exc)
                chunk.failures.append(Failure(key, error, format_traceback(exc)))
                continue
            keys.append(key)
            values.append(value)
        chunk.keys, chunk.values = keys, values
        if not values:
            self.work.finish(Done(chunk, [([], []) for _ in range(self.work.ports)], 0))
            return None
        return pickle.dumps(("calls", [(chunk.seq, keys, True, parts, [])]), protocol=5)

    def _handle(
        self,
        proc: Proc,
        message: tuple[Any, ...],
        held: dict[int, Chunk],
        sent: deque[tuple[list[int], float]],
        again: deque[Chunk],
    ) -> None:
        kind = message[0]
        if kind == "ready":
            proc.ready = True
        elif kind == "log":
            self._log(proc, message[1])
        elif kind == "setup":
            self.work.setup_failed(_load_error(message[1]), message[2], None)
            raise Cancelled
        elif kind == "done":
            sent.popleft()
            for entry in message[1]:
                chunk = held.pop(entry[0])
                if entry[1] == "again":  # the worker could not unpickle it whole
                    chunk.split = True
                    again.append(chunk)
                    continue
                got = self._done(chunk, entry)
                if got is None:  # its results could not be unpickled whole
                    chunk.split = True
                    again.append(chunk)
                    continue
                self._learn(got[0], got[1])
                self.work.finish(got[0])

    def _done(self, chunk: Chunk, entry: tuple[Any, ...]) -> tuple[Done, int] | None:
        """The `Done` a worker's entry describes, and the bytes its results took; None when a
        whole-chunk result cannot be unpickled (the chunk then runs again item by item, to
        find the item: its items run twice)."""
        _, _, outputs, completed, dropped, errors, busy = entry
        failures = [Failure(key, _load_error(data), tb) for key, data, tb in errors]
        ports: list[tuple[Sequence[int], list[Any]]] = []
        size = 0
        for keys, split, data, places in outputs:
            if not split:
                try:
                    ports.append((keys, decode(data, places, self.mapper)))
                except Exception:
                    return None
                size += len(data) + sum(p[2] for p in places)
                continue
            good_keys, good_values = [], []
            for key, part in zip(keys, data, strict=True):
                if part is None:
                    continue  # its failure is in ``errors``
                try:
                    good_values.append(decode(part[0], part[1], self.mapper))
                    good_keys.append(key)
                except Exception as exc:
                    error = _TransitError(f"the result of item {key} could not be unpickled", exc)
                    if key not in {f.key for f in failures}:
                        failures.append(Failure(key, error, format_traceback(exc)))
                        completed -= 1
            ports.append((good_keys, good_values))
        return Done(chunk, ports, completed, dropped, failures, busy), size

    def _learn(self, done: Done, size: int) -> None:
        """Large results: the stage holds one chunk (of one item) per worker and one more
        (waiting in the reorder window for a slower earlier item); each one held is memory."""
        per_item = size / max(1, len(done.chunk.values))
        if self._avg_bytes is None:
            self._avg_bytes = per_item
        else:
            self._avg_bytes = 0.7 * self._avg_bytes + 0.3 * per_item
        big = self._avg_bytes >= BIG_RESULT
        if big != self._big:
            self._big = big
            workers = self.work.options.workers
            self.work.set_window(workers + 1 if big else (DEPTH + 1) * workers)

    def _replace(
        self,
        slot: int,
        proc: Proc,
        held: dict[int, Chunk],
        sent: deque[tuple[list[int], float]],
        again: deque[Chunk],
        late: bool,
    ) -> Proc:
        """The worker died (or ran late): settle the item it ran and start a fresh worker.
        The chunks it held go again, in order (also their items that ran before the crash:
        their results had not been sent)."""
        seq, index = struct.unpack_from("<qq", self._progress, 16 * slot)
        if late:
            proc.kill()
        proc.process.join(1.0)
        self._retire(proc, 0.0)
        if late and seq == _IDLE and held:
            seq, index = next(iter(held)), 0
        chunks = list(held.values())  # in the order sent
        held.clear()
        sent.clear()
        if self.cancelled():
            raise Cancelled
        culprit = next((c for c in chunks if c.seq == seq), None)
        if culprit is not None and not 0 <= index < len(culprit.values):
            culprit = None
        if culprit is not None:
            self._settle(proc, culprit, index, late)
        again.extendleft(reversed(chunks))
        return self._start(slot)

    def _settle(self, proc: Proc, chunk: Chunk, index: int, late: bool) -> None:
        """Item ``index`` of ``chunk`` crashed its worker (or ran late): it goes again if its
        retries allow, else it fails (and the rest of the chunk goes again without it). Many
        different items crashing within `CRASH_WINDOW_S` is a crash loop: the run ends."""
        work = self.work
        key = chunk.keys[index]
        now = time.monotonic()
        self._crash_times.append((now, key))
        while self._crash_times and self._crash_times[0][0] < now - CRASH_WINDOW_S:
            self._crash_times.popleft()
        if late:
            assert work.options.timeout is not None
            error: BaseException = timeout_error(work.name, key, work.options.timeout)
        else:
            what = (
                f"stage {work.name!r}: worker process {proc.pid} {proc.describe_exit()} "
                f"while running item {key}"
            )
            error = _crash(what, work.name, proc, key)
            distinct = {k for _, k in self._crash_times}
            if len(distinct) >= CRASH_LOOP:
                loop = (
                    f"{what}: workers died on {len(distinct)} different items within "
                    f"{CRASH_WINDOW_S:g} s; stopping (crash loop)"
                )
                work.setup_failed(_crash(loop, work.name, proc, key), "", key)
                raise Cancelled
        tries = self._crashes[key] = self._crashes.get(key, 0) + 1
        if tries <= work.options.retries:
            return  # the whole chunk goes again
        chunk.failures.append(Failure(key, error, ""))
        chunk.keys = [k for i, k in enumerate(chunk.keys) if i != index]
        chunk.values = [v for i, v in enumerate(chunk.values) if i != index]

    def _log(self, proc: Proc, fields: dict[str, Any]) -> None:
        record = logging.makeLogRecord(fields)
        record.processName = f"{self.work.name}/worker-{proc.slot}"
        record.headrace_stage = self.work.name
        record.headrace_worker = proc.pid
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)

    # --- stream stages: a feeder thread sends, the supervisor receives -------------------

    def _run_stream(self, proc: Proc) -> bool:
        feeder = threading.Thread(
            target=self._feed,
            args=(proc,),
            name=f"{threading.current_thread().name}-feed",
            daemon=True,
        )
        feeder.start()
        with self._lock:
            self._feeders.append(feeder)
        while True:
            ready = multiprocessing.connection.wait([proc.results, proc.sentinel, self._wake_r])
            if proc.results in ready or (proc.sentinel in ready and proc.results.poll()):
                try:
                    message = pickle.loads(proc.results.recv_bytes())
                except (EOFError, OSError):
                    continue
                if message[0] == "finished":
                    return self._await_idle(proc)
                self._handle_stream(proc, message)
                continue
            if proc.sentinel in ready:
                proc.process.join(1.0)
                what = (
                    f"stage {self.work.name!r}: worker process {proc.pid} "
                    f"{proc.describe_exit()} while running the stage's function"
                )
                self.work.setup_failed(_crash(what, self.work.name, proc, None), "", None)
                raise Cancelled
            if self.cancelled():
                return False

    def _feed(self, proc: Proc) -> None:
        try:
            for keys, values in self.work.stream_chunks():
                data, places = encode(values, self.pool, proc.pid, cloudpickle.dumps)
                proc.send(("items", (keys, data, places)))
            proc.send(("end",))
        except (Cancelled, StopStage, OSError, EOFError):
            pass
        except Exception as exc:
            self.work.stream_failed(_TransitError("an item could not be pickled", exc), "")

    def _handle_stream(self, proc: Proc, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "log":
            self._log(proc, message[1])
        elif kind == "out":
            for data, places in message[1]:
                self.work.emit(decode(data, places, self.mapper))
            self.work.flush()
        elif kind == "failed":
            self.work.stream_failed(_load_error(message[1]), message[2])
        elif kind == "setup":
            self.work.setup_failed(_load_error(message[1]), message[2], None)
            raise Cancelled

    # --- the end ------------------------------------------------------------------------

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
        except BaseException:  # a second Ctrl-C while closing: kill at once
            self.closing = True
            _kill_all(self._procs, None)
            raise
        if any(t.is_alive() for t in self._threads):
            self.closing = True
            self.wake()
            _kill_all(self._procs, None)
            for thread in self._threads:
                thread.join(0.5)
        with self._lock:
            feeders = list(self._feeders)
        for feeder in feeders:
            feeder.join(max(0.0, deadline - time.monotonic()))
        alive = any(t.is_alive() for t in self._threads + feeders)
        if alive:
            # The workers are dead; no segment may outlive the run. A supervisor still busy
            # here makes no new slot (the pool is closed) and cleans up when it ends.
            self.pool.close()
            remove_run(self.token)
            self._joined = True
        else:
            self._cleanup()
        return not alive

    def _cleanup(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            proc.close_pipes()
        self.pool.close()
        self.mapper.close()
        with contextlib.suppress(BufferError, ValueError):
            self._progress.close()
        remove_run(self.token)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._finalizer.cancel()


def _crash(message: str, stage: str, proc: Proc, key: int | None) -> WorkerCrashedError:
    return WorkerCrashedError(
        message, stage=stage, worker=str(proc.pid), exitcode=proc.exitcode, index=key
    )


_swept = False


def _sweep_once() -> None:
    """Remove what runs whose every process was killed at once left in /dev/shm (their resource
    tracker died with them): once per program, at its first process stage."""
    global _swept
    if not _swept:
        _swept = True
        sweep_stale()


def _cancelled(work: StageWork) -> bool:
    execution = getattr(work, "execution", None)
    return bool(execution is not None and execution.state.cancelled)


def _create_progress(name: str, workers: int) -> mmap.mmap:
    """The shared board where each worker writes the seq of the chunk it runs, and the
    position in it of the item it calls."""
    board = create(name, max(HEADER, 16 * workers))
    for slot in range(workers):
        struct.pack_into("<qq", board, 16 * slot, _IDLE, 0)
    return board


def _kill_all(procs: dict[int, Proc], token: str | None) -> None:
    """Kill every worker at once (interpreter exit, a second Ctrl-C, a close that ran late)."""
    for proc in list(procs.values()):
        proc.kill()
    for proc in list(procs.values()):
        with contextlib.suppress(Exception):
            proc.process.join(1.0)
    if token is not None:
        remove_run(token)


def _load_error(data: bytes) -> BaseException:
    """The exception `_dump_error` sent: with its own type whenever its class can be had here
    (rebuilt without ``__init__`` if need be); else a `RemoteError` with its type name."""
    payload, name, message = pickle.loads(data)
    try:
        error = pickle.loads(payload) if payload is not None else None
    except Exception:
        error = None
    if isinstance(error, tuple) and len(error) == 4 and error[0] == _REBUILD:
        error = _rebuild(error[1], error[2], error[3])
    if isinstance(error, BaseException):
        return error
    return RemoteError(name, message)


def _rebuild(cls: Any, args: tuple[Any, ...], state: dict[str, Any]) -> BaseException | None:
    try:
        error = cls.__new__(cls)
        error.args = args
        error.__dict__.update(state)
    except Exception:
        return None
    return error if isinstance(error, BaseException) else None


class WarmWorkers:
    """Idle worker processes kept for the next run of this program, per start method.

    A worker that finished its job cleanly (its stage's input ended and it said so) is given
    back here; the next process stage takes it instead of starting a process (which costs a
    fork and the imports of the stage's function). A worker idle for `IDLE_S` seconds exits by
    itself; all of them end when the interpreter exits. A worker of a failed or cancelled run
    is never kept.
    """

    def __init__(self) -> None:
        self._idle: dict[str, list[Proc]] = {}
        self._lock = threading.Lock()
        self._finalizer: Any = None

    def take(self, method: str) -> Proc | None:
        with self._lock:
            procs = self._idle.get(method, [])
            stale = []
            found = None
            while procs and found is None:
                proc = procs.pop()
                fresh = time.monotonic() - proc.idle_since < IDLE_S - IDLE_MARGIN_S
                if fresh and proc.process.is_alive():
                    found = proc
                else:
                    stale.append(proc)
        for proc in stale:
            proc.stop(0.0)
        return found

    def give(self, proc: Proc) -> None:
        proc.idle_since = time.monotonic()
        with self._lock:
            procs = self._idle.setdefault(proc.method, [])
            keep = len(procs) < MAX_WARM
            if keep:
                procs.append(proc)
            if self._finalizer is None:
                self._finalizer = multiprocessing.util.Finalize(None, self.release, exitpriority=90)
        if not keep:
            proc.stop(0.0)

    def count(self) -> int:
        with self._lock:
            return sum(len(procs) for procs in self._idle.values())

    def release(self) -> None:
        """End every idle worker now (at interpreter exit; tests that count processes)."""
        with self._lock:
            procs = [proc for procs in self._idle.values() for proc in procs]
            self._idle.clear()
        for proc in procs:
            with contextlib.suppress(OSError, ValueError):
                proc.alive.send_bytes(b"stop")
        for proc in procs:
            proc.stop(STOP_GRACE_S)


#: The idle workers of this program.
WARM = WarmWorkers()


def release_warm() -> None:
    """End the idle worker processes kept for later runs (they also end on their own after
    `IDLE_S` seconds, and at interpreter exit)."""
    WARM.release()
