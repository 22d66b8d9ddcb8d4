"""What every backend shares: chunks, the worker body, and the backend interface.

A backend only starts workers and moves chunks; everything a worker does with the items of a
chunk lives here, so it is written once:

    runner (StageWork)                      worker (thread / process / actor)
    ------------------                      ---------------------------------
    next_chunk() -> Chunk  --------------->  Caller.run(): call fn on each item, retry,
    finish(Done)           <---------------    time it; Done(outputs per port | errors)
    stream_inputs()        --------------->  run_stream(): fn(iterator) -> outputs
    emit(value)            <---------------

Per-item semantics hold inside a chunk: each item is called on its own (its retries, its
error record with its own index, its `rng`), and outputs keep their items' order.
Must not import the runner or any feature module.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import pickle
import sys
import threading
import time
import types
from abc import ABC, abstractmethod
from array import array
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Protocol

from .._errors import RemoteError, StageTimeoutError, cap_text, format_traceback, shorten
from .._stages import Empty, StageOptions, collate_auto, identity_body
from .._transport import Cancelled, StopStage, chunk_nbytes
from .._types import Collated, held_by_name

# The records below are plain classes with slots, not dataclasses: process workers import
# this module, and the dataclasses module's imports are a good part of a worker's start-up.


class Failure:
    """One item that failed: its index, the exception, the worker's traceback text."""

    __slots__ = ("error", "key", "traceback")

    def __init__(self, key: int, error: BaseException, traceback: str) -> None:
        self.key = key
        self.error = error
        self.traceback = traceback


class Chunk:
    """Consecutive items of one stage's input: ``seq`` is the chunk's position in it, ``keys``
    the items' indices (a range when consecutive). ``failures``: items of the chunk already
    settled before it runs (e.g. an item that could not be sent to a worker process).
    ``split``: sent to a worker process item by item (an item or a result of it could not
    cross whole), so that only the item at fault fails. ``base``: with a `Tail` that batches,
    the position its first output is expected to have in the batch stage's input (-1: none).
    ``sent``: a process stage's encoding of ``values`` (data, shared-memory places), kept to
    send it again; data None once ``values`` changed (its slots are still pinned)."""

    __slots__ = ("base", "failures", "keys", "nbytes", "sent", "seq", "split", "values")

    def __init__(
        self,
        seq: int,
        keys: Sequence[int],
        values: list[Any],
        nbytes: int = 0,
        failures: list[Failure] | None = None,
        split: bool = False,
        base: int = -1,
    ) -> None:
        self.seq = seq
        self.keys = keys
        self.values = values
        self.nbytes = nbytes
        self.failures: list[Failure] = [] if failures is None else failures
        self.split = split
        self.base = base
        self.sent: tuple[bytes | None, list[Any]] | None = None


class Done:
    """What became of a chunk: ``outputs`` per port (keys, values), the items completed or
    dropped (a filter's no), and the failures, in item order. ``nbytes``: bytes of array data
    in the outputs (-1: not counted yet); ``tail``: what the stages of the worker's `Tail` did
    with the outputs (None: no tail)."""

    __slots__ = ("busy_s", "chunk", "completed", "dropped", "errors", "nbytes", "outputs", "tail")

    def __init__(
        self,
        chunk: Chunk,
        outputs: list[tuple[Sequence[int], list[Any]]],
        completed: int,
        dropped: int = 0,
        errors: list[Failure] | None = None,
        busy_s: float = 0.0,
    ) -> None:
        self.chunk = chunk
        self.outputs = outputs
        self.completed = completed
        self.dropped = dropped
        self.errors: list[Failure] = [] if errors is None else errors
        self.busy_s = busy_s
        self.nbytes = -1
        self.tail: list[TailFigures] | None = None


def failed(chunk: Chunk, failure: Failure, ports: int, busy_s: float = 0.0) -> Done:
    """A chunk of one item that failed as a whole (a timeout, a crash)."""
    return Done(chunk, [([], []) for _ in range(ports)], 0, 0, [failure], busy_s)


class StageWork(Protocol):
    """The runner's side of one stage, as its workers see it."""

    name: str
    kind: str
    fn: Any
    options: StageOptions
    ports: int
    position: int
    #: The pickled `Tail` of a process stage (None: none), and the names of its stages.
    tail_spec: bytes | None
    tail_names: list[str]

    @property
    def seed(self) -> int: ...
    @property
    def start_method(self) -> str | None: ...
    @property
    def shm_budget(self) -> int: ...

    def next_chunk(self, block: bool = True) -> Chunk | bool | None: ...
    def on_cancel(self, callback: Callable[[], None]) -> None: ...
    def set_window(self, chunks: int) -> None: ...
    def finish(self, done: Done) -> None: ...
    def stream_inputs(self) -> Iterator[Any]: ...
    def stream_chunks(self) -> Iterator[tuple[Sequence[int], list[Any]]]: ...
    def emit(self, value: Any) -> None: ...
    def flush(self) -> None: ...
    def forward(self) -> None: ...
    def stream_failed(self, error: BaseException, tb: str) -> None: ...
    def setup_failed(self, error: BaseException, tb: str, key: int | None = None) -> None: ...
    def worker_exited(self) -> None: ...


class Workers(ABC):
    """The running workers of one stage."""

    @abstractmethod
    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every worker to exit; True if all did."""

    def push(self, chunk: Chunk) -> None:
        """Run ``chunk`` now, in the caller's thread (only backends that run inline)."""
        raise NotImplementedError


class Backend(ABC):
    """Starts the workers of a stage."""

    name: str
    #: Its workers run a `Tail` (the cheap stages after theirs) when given one.
    runs_tail: bool = False
    #: Seconds of work a chunk should take on this backend: enough to pay for its hand-off
    #: (a lock and a wake-up on threads; a pipe round trip on processes).
    chunk_s: float = 0.002

    @abstractmethod
    def start(self, work: StageWork) -> Workers: ...

    def window(self, options: StageOptions) -> tuple[int, int | None]:
        """How many chunks (and bytes of array data, None: not counted) a stage may have
        taken and not yet delivered: one in hand and one in the reorder window per worker."""
        return 2 * options.workers, None


# --- the worker body -----------------------------------------------------------------------


def instantiate(fn: Any) -> Any:
    """A class whose instances are callable is instantiated once per worker (a model loaded
    once); any other callable, ``str`` or ``int`` among them, is called as it is."""
    if isinstance(fn, type) and any("__call__" in vars(k) for k in fn.__mro__[:-1]):
        return fn()
    return fn


def branches(choice: Any, ports: int, value: Any) -> list[int]:
    """The branch indices a route function chose, checked against the branch count."""
    if choice is None:
        return []
    chosen = [choice] if isinstance(choice, int) else list(choice)
    for index in chosen:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < ports:
            raise ValueError(
                f"route function returned {index!r} for item {shorten(repr(value), 80)}; "
                f"valid branch indices are 0..{ports - 1} (or None to drop the item)"
            )
    return chosen


def new_mark() -> memoryview:
    """Where a worker writes the position (in its chunk) of the item it is calling."""
    return memoryview(array("q", [0]))


class Caller:
    """Runs a call stage's function over chunks, one item at a time, in one worker.

    The loops below are the hot path: one Python loop per chunk, with the item's position
    written to ``mark`` before each call (it tells `rng` which item runs, and a process
    worker's supervisor which item a crash killed). An exception drops out of the loop to
    `_settle` for that item (retries, the error record), and the loop resumes after it.
    """

    def __init__(self, work: StageWork, fn: Any, mark: memoryview | None = None) -> None:
        opts = work.options
        self.fn = fn
        self.kind = work.kind
        self.ports = work.ports
        self.name = work.name
        self.retries = opts.retries
        self.timeout = opts.timeout
        self.skip = opts.on_error == "skip"
        self.seed = work.seed
        self.position = work.position
        self.mark = mark if mark is not None else new_mark()
        #: A call that returns past the timeout runs again within its retries (inline: no
        #: watchdog; the thread and process backends retry a late item themselves).
        self.retry_late = False

    def run(self, chunk: Chunk, late: int = 0) -> Done:
        """Call the function on each item of ``chunk`` (``late``: times this chunk of one
        item ran past the timeout already, when `retry_late`)."""
        keys, values = chunk.keys, chunk.values
        n = len(values)
        mark = self.mark
        set_chunk(self.seed, self.position, keys, mark)
        acc = _Accumulator(self.kind, self.ports)
        errors: list[Failure] = []
        start = time.perf_counter()
        i = 0
        reached = n  # positions visited: every item, unless a failure stopped the chunk
        while i < n:
            try:
                self._loop(acc, values, i, n)
                break
            except BaseException as exc:
                i = mark[0]
                failure = self._settle(acc, keys[i], values[i], exc, i)
                if failure is not None:
                    errors.append(failure)
                    if not self.skip:
                        reached = i + 1
                        break
                i += 1
        busy = time.perf_counter() - start
        if self.timeout is not None and busy > self.timeout and n == 1 and not errors:
            if self.retry_late and late < self.retries:  # an inline call, late: again
                return self.run(chunk, late + 1)
            error = timeout_error(self.name, keys[0], self.timeout)
            return failed(chunk, Failure(keys[0], error, ""), self.ports, busy)
        outputs, dropped = acc.outputs(keys, values, reached)
        completed = reached - len(errors) - dropped
        return Done(chunk, outputs, completed, dropped, errors, busy)

    def _loop(self, acc: _Accumulator, values: list[Any], start: int, n: int) -> None:
        fn, mark = self.fn, self.mark
        kind = self.kind
        if kind == "map":
            out = acc.values[0].append
            for i in range(start, n):
                mark[0] = i
                out(fn(values[i]))
        elif kind == "filter":
            kept = acc.kept.append
            for i in range(start, n):
                mark[0] = i
                if fn(values[i]):
                    kept(i)
        elif kind == "sink":
            for i in range(start, n):
                mark[0] = i
                fn(values[i])
        else:
            for i in range(start, n):
                mark[0] = i
                acc.apply(i, fn(values[i]), values[i], self.ports)

    def _settle(
        self, acc: _Accumulator, key: int, value: Any, exc: BaseException, i: int
    ) -> Failure | None:
        """Item ``i`` raised ``exc``: call it again up to ``retries`` times; its failure, or
        None when a retry succeeded (its outputs are then in ``acc``)."""
        attempt = 0
        while attempt < self.retries and isinstance(exc, Exception):
            attempt += 1
            try:
                result = self.fn(value)
            except BaseException as again:
                exc = again
                continue
            if self.kind == "map":
                acc.values[0].append(result)
            elif self.kind == "filter":
                if result:
                    acc.kept.append(i)
            elif self.kind != "sink":
                acc.apply(i, result, value, self.ports)
            return None
        acc.failed.add(i)
        return Failure(key, exc, format_traceback(exc))


class _Accumulator:
    """The outputs of one chunk as its loop makes them."""

    __slots__ = ("dropped", "failed", "kept", "keys", "kind", "values")

    def __init__(self, kind: str, ports: int) -> None:
        self.kind = kind
        self.dropped = 0
        self.failed: set[int] = set()
        self.kept: list[int] = []
        self.keys: list[list[int]] = [[] for _ in range(ports)]
        self.values: list[list[Any]] = [[] for _ in range(ports)]

    def apply(self, i: int, result: Any, value: Any, ports: int) -> None:
        """flat_map and route (the kinds without a loop of their own)."""
        if self.kind == "flat_map":
            outs = list(result)
            self.values[0].extend(outs)
            self.keys[0].extend([i] * len(outs))
        else:
            chosen = branches(result, ports, value)
            for port in chosen:
                self.keys[port].append(i)
                self.values[port].append(value)
            if not chosen:
                self.dropped += 1

    def outputs(
        self, keys: Sequence[int], values: list[Any], reached: int
    ) -> tuple[list[tuple[Sequence[int], list[Any]]], int]:
        """The outputs per port and the items dropped, for the first ``reached`` items."""
        kind = self.kind
        if kind == "map":
            if len(self.values[0]) == len(keys):
                return [(keys, self.values[0])], 0
            done = [keys[i] for i in range(reached) if i not in self.failed]
            return [(done, self.values[0])], 0
        if kind == "filter":
            kept = self.kept
            dropped = reached - len(self.failed) - len(kept)
            return [([keys[i] for i in kept], [values[i] for i in kept])], dropped
        if kind == "sink":
            return [([], [])], 0
        # flat_map, route: positions to indices
        outs: list[tuple[Sequence[int], list[Any]]] = [
            ([keys[i] for i in ks], vs) for ks, vs in zip(self.keys, self.values, strict=True)
        ]
        return outs, self.dropped


def log_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A worker's `logging` record as plain fields (message formatted, traceback as text, only
    values that pickle everywhere), for the parent's ``logging.makeLogRecord``."""
    fields = dict(record.__dict__)
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info:
        fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
    fields["exc_info"] = None
    plain = (str, int, float, bool, tuple)
    return {k: v for k, v in fields.items() if v is None or isinstance(v, plain)}


# --- a tail: the cheap stages that follow a process stage, run in its workers -----------------


class TailStage:
    """An inline ``map`` or ``filter`` that runs in the workers of the stage before it."""

    __slots__ = ("fn", "kind", "name", "options", "ports", "position", "seed")

    def __init__(
        self,
        name: str,
        kind: str,
        fn: Any,
        options: StageOptions,
        position: int,
        seed: int,
        ports: int = 1,
    ) -> None:
        self.name = name
        self.kind = kind
        self.fn = fn
        self.options = options
        self.position = position
        self.seed = seed
        self.ports = ports


class TailFigures:
    """What one tail stage did with a chunk: as `Done` counts them."""

    __slots__ = ("busy_s", "completed", "dropped", "errors", "items_in")

    def __init__(
        self, items_in: int, completed: int, dropped: int, errors: list[Failure], busy_s: float
    ) -> None:
        self.items_in = items_in
        self.completed = completed
        self.dropped = dropped
        self.errors = errors
        self.busy_s = busy_s


class Tail:
    """The inline stages after a process stage, run in its workers on each chunk's outputs
    (saving a hop through the parent per item), then optionally its ``batch``: the outputs at
    positions ``base + i`` with ``(base + i) % size == 0`` and ``size`` outputs in this chunk
    go out as one `Collated` batch; the rest go out as items, for the batch stage to gather.

        Done(outputs) -> stage 1 (Caller) -> ... -> stage k -> [batch] -> Done(outputs), figures
    """

    def __init__(self, stages: Sequence[TailStage], batch: tuple[int, Any] | None) -> None:
        self.callers = [Caller(stage, instantiate(stage.fn)) for stage in stages]  # type: ignore[arg-type]
        self.batch = batch
        #: Where the "auto" collate stacks arrays (see `collate_auto`): a process worker gives
        #: its shared-memory slots, so a batch is written once, where it crosses.
        self.empty: Empty | None = None

    def run(self, done: Done) -> list[TailFigures]:
        """Replace ``done``'s outputs by the tail's; the figures of each tail stage."""
        keys, values = done.outputs[0]
        figures = []
        for caller in self.callers:
            if not values:
                figures.append(TailFigures(0, 0, 0, [], 0.0))
                continue
            part = caller.run(Chunk(-1, keys, values))
            figures.append(
                TailFigures(len(values), part.completed, part.dropped, part.errors, part.busy_s)
            )
            keys, values = part.outputs[0]
        if self.batch is not None and done.chunk.base >= 0 and not done.chunk.split:
            size, collate = self.batch
            keys, values = _collated(keys, values, done.chunk.base, size, collate, self.empty)
        done.outputs = [(keys, values)]
        return figures


def _collated(
    keys: Sequence[int],
    values: list[Any],
    base: int,
    size: int,
    collate: Any,
    empty: Empty | None = None,
) -> tuple[list[int], list[Any]]:
    """Whole aligned groups of ``size`` outputs as `Collated` batches, the rest as they are."""

    def gather(group: list[Any]) -> Any:
        return collate_auto(group, empty) if collate == "auto" else list(group)

    out_keys: list[int] = []
    out: list[Any] = []
    n = len(values)
    i = 0
    while i < n:
        if (base + i) % size == 0 and i + size <= n:
            group = values[i : i + size]
            try:
                batch = gather(group)
            except Exception:  # the batch stage meets the same error with the items
                batch = None
            if batch is not None:
                out_keys.append(keys[i])
                out.append(Collated(batch, size, chunk_nbytes([batch])))
                i += size
                continue
            out_keys.extend(keys[i : i + size])
            out.extend(group)
            i += size
            continue
        out_keys.append(keys[i])
        out.append(values[i])
        i += 1
    return out_keys, out


def timeout_error(stage: str, key: int, timeout: float) -> StageTimeoutError:
    return StageTimeoutError(
        f"stage {stage!r}: item {key} ran longer than timeout={timeout} s; raise the timeout "
        "or use on_error='skip' to record such items and go on"
    )


def run_calls(
    work: StageWork,
    watch: Callable[[Chunk | None], bool] | None = None,
    mark: memoryview | None = None,
    first: Chunk | None = None,
) -> None:
    """A call-stage worker: take chunks until the input ends, finish each.

    ``watch(chunk)`` is told which chunk the worker starts (and None when it is done with
    it); when it returns False the worker was given up on (timed out) and exits. ``first``:
    a chunk to run before taking any (one that timed out on another worker, tried again)."""
    try:
        caller = Caller(work, instantiate(work.fn), mark)
    except BaseException as exc:
        work.setup_failed(exc, format_traceback(exc))
        return
    while isinstance(chunk := first or work.next_chunk(), Chunk):
        first = None
        if watch is not None:
            watch(chunk)
        done = caller.run(chunk)
        if watch is not None and not watch(None):
            return
        work.finish(done)


def run_stream(work: StageWork) -> None:
    """A stream-stage worker: the function consumes its own sub-stream and yields outputs.

    Under on_error='skip' a failing function is recorded and started again on the rest of
    the sub-stream."""
    try:
        fn = instantiate(work.fn)
    except BaseException as exc:
        work.setup_failed(exc, format_traceback(exc))
        return
    if work.fn is identity_body:
        work.forward()  # prefetch, merge: whole chunks pass through
        return
    inputs = work.stream_inputs()
    while True:
        try:
            for value in _as_iterable(fn(inputs)):
                work.emit(value)
            work.flush()
            return
        except BaseException as exc:
            if isinstance(exc, Cancelled | StopStage):
                raise
            work.flush()
            work.stream_failed(exc, format_traceback(exc))
            if work.options.on_error != "skip":
                return


def _as_iterable(result: Any) -> Iterable[Any]:
    if result is None:
        return ()
    return result  # type: ignore[no-any-return]


# --- per-item random generators ---------------------------------------------------------------
# A worker names its current chunk once (its keys, and the mark its loop writes the item's
# position to); `rng` reads the item's index from them only when it is called.

_item = threading.local()
_ZERO = memoryview(bytes(8)).cast("q")  # a mark that always says position 0


def set_chunk(seed: int, position: int, keys: Sequence[int], mark: memoryview) -> None:
    _item.context = (seed, position, keys, mark)
    _item.rng = None  # a generator made for an earlier run's item must not be reused


def set_item(seed: int, position: int, key: int) -> None:
    _item.context = (seed, position, (key,), _ZERO)
    _item.rng = None


def save_context() -> Any:
    return getattr(_item, "context", None)


def restore_context(context: Any) -> None:
    _item.context = context


def item_entropy() -> tuple[int, int, int] | None:
    context = getattr(_item, "context", None)
    if context is None:
        return None
    seed, position, keys, mark = context
    return seed, position, int(keys[mark[0]])


def item_rng(entropy: tuple[int, int, int]) -> Any:
    """The generator already made for this item, if any."""
    cached = getattr(_item, "rng", None)
    return cached[1] if cached is not None and cached[0] == entropy else None


def cache_rng(entropy: tuple[int, int, int], rng: Any) -> None:
    _item.rng = (entropy, rng)


# --- what crosses to a worker elsewhere: the function, and errors with their types ------------


def cloudpickle_dumps(obj: Any, protocol: int = 5, **kwargs: Any) -> bytes:
    """``cloudpickle.dumps``, imported on first use: a worker needs it only for what plain
    pickle refuses (a lambda, a local class), and its imports are a third of a worker
    program's start-up."""
    import cloudpickle

    return bytes(cloudpickle.dumps(obj, protocol=protocol, **kwargs))


def dumps_keeping_files(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj, protocol=5)``, except that functions sent by value keep their
    file name (so tracebacks in workers show the user's file and source line)."""
    buffer = io.BytesIO()
    _keeping_files_pickler()(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


_DYNAMIC = "<dynamic-code>"


@functools.cache
def _keeping_files_pickler() -> type:
    """cloudpickle's Pickler, keeping the file names of the functions it sends by value:
    cloudpickle writes ``<dynamic-code>`` for a code object's file (for byte-identical
    payloads), and a worker's traceback would then show neither the file nor the source line
    of the user's function. Made on first use, as `cloudpickle_dumps` imports cloudpickle."""
    import cloudpickle

    cloud_reduce = cloudpickle.Pickler.dispatch_table.get(types.CodeType)

    def code_reduce(code: types.CodeType) -> Any:
        reduced = cloud_reduce(code)
        args = tuple(code.co_filename if a == _DYNAMIC else a for a in reduced[1])
        return (reduced[0], args, *reduced[2:])

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
            {types.CodeType: code_reduce} if cloud_reduce else {},
            cloudpickle.Pickler.dispatch_table,
        )

    return Pickler


def dump_callable(name: str, fn: Any) -> bytes:
    """The stage function as bytes for the workers; a clear TypeError if it cannot be sent."""
    if _by_reference(fn):
        with contextlib.suppress(Exception):
            return pickle.dumps(fn, protocol=5)
    try:
        return dumps_keeping_files(fn)
    except Exception as exc:
        raise TypeError(
            f"stage {name!r}: its function {shorten(repr(fn), 120)} cannot be sent to a worker "
            f"process: {type(exc).__name__}: {shorten(str(exc), 300)}. Make what it refers to "
            "picklable (e.g. open files or locks inside the function, or in a class's "
            "__init__), or use backend='thread'."
        ) from exc


def _by_reference(fn: Any) -> bool:
    """Whether plain pickle sends ``fn`` as cloudpickle would, by reference to its module:
    a function, class or builtin that its module (not the main script's) holds under its
    name, while cloudpickle is not loaded (so that no module was registered to go by value).
    The program then need not import cloudpickle (a fifth of a first process run's set-up)."""
    return (
        "cloudpickle" not in sys.modules
        and isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type))
        and held_by_name(fn)
    )


#: Characters of one text argument of an exception that cross between processes, at most.
MAX_CROSSING_TEXT = 64 * 1024


def dump_error(error: BaseException) -> bytes:
    """The exception as bytes for the parent: the exception itself when it pickles whole; else
    its class, args and the attributes that pickle, to rebuild it without calling
    ``__init__`` (a class whose ``__init__`` does not take its ``args`` is common); with its
    type name and message, for a `RemoteError` when even the class cannot travel. A text
    argument over `MAX_CROSSING_TEXT` characters crosses cut to its head and tail (a 100 MB
    message would take seconds to pickle and send, and the records keep less anyway)."""
    name = f"{type(error).__module__}.{type(error).__qualname__}"
    if any(isinstance(a, str) and len(a) > MAX_CROSSING_TEXT for a in error.args):
        with contextlib.suppress(Exception):  # an exception whose args are read-only
            error.args = tuple(
                cap_text(a, MAX_CROSSING_TEXT) if isinstance(a, str) else a for a in error.args
            )
    message = shorten(str(error))
    payload: bytes | None = None
    try:
        payload = cloudpickle_dumps(error)
        pickle.loads(payload)  # rebuilding fails for e.g. a class whose __init__ takes 2 args
    except BaseException:
        state = {k: v for k, v in vars(error).items() if _pickles(v)}
        try:
            payload = cloudpickle_dumps((_REBUILD, type(error), error.args, state))
        except BaseException:
            payload = None
    return pickle.dumps((payload, name, message), protocol=5)


_REBUILD = "headrace-rebuild"


def _pickles(value: Any) -> bool:
    try:
        cloudpickle_dumps(value)
    except BaseException:
        return False
    return True


def load_error(data: bytes) -> BaseException:
    """The exception `dump_error` sent: with its own type whenever its class can be had here
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
