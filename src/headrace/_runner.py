"""The runner: executes a compiled plan. Written once; backends only start workers.

    source thread: SourceReader --chunk--> FanOut --> [Channel] / fused stage
    stage:  Window -> next_chunk() --> workers --> finish(Done) --> Reorder --> outbox
            --> one emitter at a time: FanOut --> [Channel] / fused stage

Owns: `Execution` (one run: stage runners, channels, cancel, failure, close, figures),
`StageRunner` (one stage: takes chunks from its input channel under the in-flight window,
restores input order, applies the error policy, counts, hands outputs on, ends the stream) and
`FanOut` (a stage's consumers). Runner locks guard only bookkeeping: user code and blocking
puts run outside them (a finished chunk waits in the outbox; one thread at a time delivers).
Imports graph, stages, transport, flow and backends; nothing above it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._backends._base import (
    Backend,
    Chunk,
    Done,
    Failure,
    TailFigures,
    TailStage,
    Workers,
    dumps_keeping_files,
    restore_context,
    save_context,
    set_item,
)
from ._backends._inline import InlineBackend
from ._backends._process import ProcessBackend
from ._backends._thread import ThreadBackend
from ._errors import ClosedError, deliver, format_traceback, shorten
from ._flow import CHUNK_BYTES, MAX_CHUNK, Reorder, Sizer, SourceReader, Window
from ._graph import Node, Plan
from ._records import ErrorRecord, StageSnapshot
from ._shm import default_budget
from ._stages import CALL_KINDS, KEY_KEEPING, STREAM_KINDS, StageOptions
from ._transport import (
    END,
    Cancelled,
    Channel,
    Daemon,
    RunState,
    StopStage,
    ZipChannel,
    chunk_nbytes,
)
from ._transport import nbytes as item_nbytes
from ._types import weight

if TYPE_CHECKING:
    from ._backends._ray import RayEngine

#: Seconds `Execution.close` waits for workers before giving up on them (RELIABILITY 3).
CLOSE_TIMEOUT = 5.0
#: Seconds a failing run waits for its workers before the error is raised: enough for every
#: worker blocked in headrace to exit; a thread inside a long user call ends when it returns.
ERROR_GRACE = 0.25
#: A stream stage hands on what it has made when the oldest output has waited this long (or
#: when it is about to wait for input): a transform that makes items slowly still delivers
#: each promptly.
EMIT_S = 0.001

BACKENDS: dict[str, Backend] = {
    "inline": InlineBackend(),
    "thread": ThreadBackend(),
    "process": ProcessBackend(),
}


def fused(node: Node) -> bool:
    """An inline call stage runs in the thread that produces its input."""
    return node.kind in CALL_KINDS and node.options.backend == "inline"


def aligned(limit: int, base: int, size: int) -> int:
    """A chunk's item limit, about ``limit``, that makes it end on a batch boundary (``base``:
    where its first output lands in the batch stage's input), with at least one whole batch.

    >>> aligned(4, 0, 32), aligned(4, 30, 32), aligned(100, 32, 32)
    (32, 34, 128)
    """
    first = -base % size  # outputs before the first whole batch
    return first + size * max(1, -(-(limit - first) // size))


class InWorkers(Workers):
    """The workers of a stage that runs in the workers of the stage before it (a tail)."""

    def push(self, chunk: Chunk) -> None:
        raise AssertionError("a tail stage's chunks run in the workers of the stage before it")

    def join(self, timeout: float) -> bool:
        return True


class Inlet:
    """One producer's end of a channel."""

    def __init__(self, channel: Channel, producer: int) -> None:
        self.channel = channel
        self.producer = producer
        self.counts_bytes = channel.counts_bytes

    def put(self, keys: Sequence[int], values: list[Any], size: int) -> bool:
        return self.channel.put(keys, values, self.producer, size)

    def close(self) -> None:
        self.channel.close(self.producer)

    @property
    def detached(self) -> bool:
        return self.channel.detached


class FusedInlet:
    """The input of a fused stage: a put runs the stage on the chunk at once."""

    counts_bytes = False

    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    def put(self, keys: Sequence[int], values: list[Any], size: int) -> bool:
        return self.runner.push(keys, values)

    def close(self) -> None:
        self.runner.input_closed()

    @property
    def detached(self) -> bool:
        return self.runner.stopping


Target = Inlet | FusedInlet


class FanOut:
    """A stage's consumers, per output port: a chunk goes to each of them (broadcast)."""

    def __init__(self, ports: int) -> None:
        self.ports: list[list[Target]] = [[] for _ in range(ports)]
        self.counts_bytes = False
        #: Items handed on (once per port, whatever its consumers did with them: a detached
        #: consumer counts what it discards, a cancelled put what it refused, as cancelled).
        self.out = 0
        self._lock = threading.Lock()

    def add(self, port: int, target: Target) -> None:
        self.ports[port].append(target)
        self.counts_bytes = self.counts_bytes or target.counts_bytes

    def put(
        self, port: int, keys: Sequence[int], values: list[Any], size: int = -1, count: int = -1
    ) -> None:
        """Hand a chunk to every consumer of ``port`` and count it in `out` (also when a
        consumer refuses it: the run is cancelled, or the consumer detached and counts it as
        discarded); StopStage once nobody reads any port. ``count``: the items the chunk
        stands for, when not one per value (batches made by a `Tail`)."""
        if size < 0:
            size = chunk_nbytes(values) if self.counts_bytes else 0
        targets = self.ports[port]
        delivered = False
        try:
            for target in targets:
                delivered = target.put(keys, values, size) or delivered
        finally:
            if targets:
                self.count(len(values) if count < 0 else count)
        if not delivered and all(t.detached for targets in self.ports for t in targets):
            raise StopStage

    def count(self, n: int) -> None:
        with self._lock:
            self.out += n

    def close(self) -> None:
        for targets in self.ports:
            for target in targets:
                target.close()

    def channels(self) -> list[Channel]:
        return [t.channel for targets in self.ports for t in targets if isinstance(t, Inlet)]


class StageRunner:
    """One stage of a run, as its workers see it (`StageWork`) and as the runner drives it."""

    def __init__(self, execution: Execution, node: Node, name: str, position: int) -> None:
        self.execution = execution
        self.node = node
        self.name = name
        self.position = position
        self.kind = node.kind
        self.fn = node.fn
        self.options = node.options
        self.ports = node.ports
        self.backend = node.options.backend
        self.inbox: Channel | None = None
        self.fanout = FanOut(node.ports)
        self.workers: Workers | None = None
        self.thread: Daemon | None = None  # sources only
        backend = execution.backends[node.options.backend]
        chunks, max_bytes = backend.window(node.options)
        self.window = Window(execution.state, chunks, max_bytes, node.options.workers)
        timed = node.options.timeout is not None
        # An explicit maxsize bounds the items in the stage's output channel: chunks too.
        self.max_chunk = node.options.maxsize or MAX_CHUNK
        self.sizer = Sizer(backend.chunk_s, fixed=1 if timed else None, cap=self.max_chunk)
        self.reorder = Reorder(node.options.ordered and node.options.workers > 1)
        self.lock = threading.Lock()  # counts, the reorder buffer, the outbox
        self._take_lock = threading.Lock()  # taking from the input
        self._outbox: deque[Done] = deque()
        self._emitting = False  # a thread is delivering the outbox
        self._local = threading.local()
        self._taken = 0  # chunks taken
        self._delivered = 0  # chunks delivered (or settled)
        self._out_key = 0
        self._live = node.options.workers
        self.input_ended = False
        self.stopping = False
        self.done = False
        self.items_in = self.completed = self.dropped = self.errors = 0
        self.unused = 0  # a stream stage's items taken that its function never asked for
        self.busy_s = 0.0
        self.started = time.perf_counter()
        self.ended: float | None = None
        # A process stage whose workers run the cheap stages after it (`_backends._base.Tail`):
        # those stages' runners only count what the workers report, and the batch stage gets
        # `Collated` batches (weighed as their items).
        self.tail_spec: bytes | None = None
        self.tail_names: list[str] = []
        self.tail: list[StageRunner] = []
        self.in_workers_of: StageRunner | None = None
        self.batch_size = 0  # the size of the batches the workers make (0: none)
        self._expected = 0  # where the next chunk's first output lands in the batch's input
        self.collated = False  # a batch stage whose input may hold `Collated` batches

    # --- taking input ---------------------------------------------------------------------

    def next_chunk(self, block: bool = True) -> Chunk | bool | None:
        """The next chunk of input, sized by the stage's `Sizer`, under the in-flight window.
        None once the input has ended (or the stage stops); False (only when not ``block``)
        when there is nothing to take now."""
        if not self._take_lock.acquire(blocking=block):
            return False
        try:
            if self.input_ended or self.stopping:
                return None
            if not self.window.acquire(block):
                return False
            assert self.inbox is not None
            limit = self.sizer.limit()
            if self.batch_size:
                with self.lock:
                    limit = min(self.max_chunk, aligned(limit, self._expected, self.batch_size))
            try:
                got = self.inbox.get_sized(limit, block)
            except BaseException:
                self.window.release()
                raise
            if got is None or got is END:
                self.window.release()
                if got is None:
                    return False
                self.input_ended = True
                self._maybe_end()
                return None
            keys, values, size = got
            if self.batch_size:
                keys, values = self._to_boundary(keys, values)
                size = -1
            if self.window.max_bytes is None:
                size = 0
            elif size < 0:  # the channel does not know them (the producers counted them once)
                size = chunk_nbytes(values)
            self.window.add_bytes(size)
            chunk = Chunk(self._taken, keys, values, size)
            if self.batch_size:
                with self.lock:
                    chunk.base = self._expected
                    self._expected += len(values)
            self._taken += 1
            self.items_in += len(values)
            return chunk
        finally:
            self._take_lock.release()

    def _to_boundary(
        self, keys: Sequence[int], values: list[Any]
    ) -> tuple[Sequence[int], list[Any]]:
        """A chunk cut short by the channel (it joins only whole chunks queued behind the
        first), made up with the items already queued up to the next batch boundary."""
        with self.lock:
            need = -(self._expected + len(values)) % self.batch_size
        while need:
            assert self.inbox is not None
            more = self.inbox.get(need, block=False)
            if more is None or more is END:  # nothing more now (END stays for the next take)
                break
            keys, values = [*keys, *more[0]], values + more[1]
            need -= len(more[1])
        return keys, values

    def set_window(self, chunks: int) -> None:
        """Change how many chunks the stage may hold in flight (a backend that learns its
        items are large keeps fewer of them)."""
        self.window.resize(chunks)

    def stream_chunks(self) -> Iterator[tuple[Sequence[int], list[Any]]]:
        """The input of a stream stage, chunk by chunk (this worker's share of it)."""
        assert self.inbox is not None
        while not (self.input_ended or self.stopping):
            got = self.inbox.get(0, block=False)
            if got is None:
                self.flush()  # about to wait: what is made so far goes out first
                got = self.inbox.get(0, block=True)
            if got is END:
                self.input_ended = True
                return
            with self.lock:
                self.items_in += weight(got[1]) if self.collated else len(got[1])
            yield got

    def stream_inputs(self) -> Iterator[Any]:
        """The input of a stream stage, item by item (this worker's share of it)."""
        local = self._local
        seed, position = self.execution.seed, self.position
        for keys, values in self.stream_chunks():
            used = 0
            try:
                for key, value in zip(keys, values, strict=True):
                    local.key = key
                    set_item(seed, position, key)
                    used += 1
                    yield value
            finally:
                if used < len(values):  # the function stopped early (e.g. take)
                    left = values[used:]
                    with self.lock:
                        self.unused += weight(left) if self.collated else len(left)

    def forward(self) -> None:
        """A stage that passes its input on unchanged (prefetch, merge): chunk by chunk."""
        assert self.inbox is not None
        limit = self.options.maxsize or 0
        while not (self.input_ended or self.stopping):
            got = self.inbox.get(limit, block=True)
            if got is END:
                self.input_ended = True
                return
            keys, values = got
            with self.lock:
                self.items_in += len(values)
            if self.kind not in KEY_KEEPING:
                keys = self._new_keys(len(values))
            self.fanout.put(0, keys, values)

    def push(self, keys: Sequence[int], values: list[Any]) -> bool:
        """Fused input: run the stage on a chunk in the producer's thread. The items count
        as taken in at once: those the stage does not finish end as cancelled."""
        self.items_in += len(values)
        if self.execution.state.cancelled:
            raise Cancelled
        if self.stopping:
            return False
        if self.options.timeout is not None and len(values) > 1:  # timed: one item a chunk
            return all(self._push(keys[i : i + 1], values[i : i + 1]) for i in range(len(values)))
        return self._push(keys, values)

    def _push(self, keys: Sequence[int], values: list[Any]) -> bool:
        if self.execution.state.cancelled:
            raise Cancelled
        chunk = Chunk(self._taken, keys, values)
        self._taken += 1
        assert self.workers is not None
        context = save_context()  # the producer's item, restored for its own rng() calls
        try:
            self.workers.push(chunk)
        except StopStage:
            return False
        finally:
            restore_context(context)
        return True

    def input_closed(self) -> None:
        self.input_ended = True
        self._maybe_end()

    # --- finishing chunks -----------------------------------------------------------------

    def finish(self, done: Done) -> None:
        """A worker is done with a chunk: order it, then deliver what is ready."""
        failures = done.chunk.failures + done.errors
        if failures and self.options.on_error != "skip":
            # The chunk's other items go nowhere (the run ends): they count as cancelled.
            with self.lock:
                self.busy_s += done.busy_s
                self.errors += 1
            self._failed(failures[0])  # a failure that ends the run does not wait its turn
        if done.nbytes < 0 and (self.fanout.counts_bytes or self.window.max_bytes is not None):
            done.nbytes = sum(chunk_nbytes(values) for _, values in done.outputs)
        self.sizer.learn(len(done.chunk.values), done.busy_s, max(done.nbytes, done.chunk.nbytes))
        with self.lock:
            self.busy_s += done.busy_s
            self._outbox.extend(self.reorder.add(done.chunk.seq, done))
            if self._emitting or not self._outbox:
                return
            self._emitting = True
        self._drain()

    def _drain(self) -> None:
        """Deliver the outbox in order; the thread that finds it idle does it."""
        try:
            while True:
                with self.lock:
                    if not self._outbox:
                        self._emitting = False
                        break
                    done = self._outbox.popleft()
                self._deliver(done)
        except BaseException:
            with self.lock:
                self._emitting = False
            raise
        self._maybe_end()

    def _deliver(self, done: Done) -> None:
        chunk = done.chunk
        try:
            failures = chunk.failures + done.errors
            with self.lock:
                self.completed += done.completed
                self.dropped += done.dropped
                self.errors += len(failures)
            for failure in failures:
                self._record(failure)
            if done.tail is not None:
                self._deliver_tail(done, len(failures))
                return
            for port, (keys, values) in enumerate(done.outputs):
                if values:
                    if self.kind not in KEY_KEEPING:
                        keys = self._new_keys(len(values))
                    # A total over several ports is no port's: each counts its own.
                    size = done.nbytes if len(done.outputs) == 1 else -1
                    self.fanout.put(port, keys, values, size)
        finally:
            if not fused(self.node):
                self.window.release(chunk.nbytes)
            with self.lock:
                self._delivered += 1

    def _deliver_tail(self, done: Done, failed: int) -> None:
        """Hand on what this stage's workers made with their `Tail`: each tail stage counts
        what it did, and the last one's consumers get its outputs (and batches)."""
        assert done.tail is not None
        keys, values = done.outputs[0]
        count = weight(values) if self.batch_size else len(values)
        if self.batch_size:  # items lost on the way shift later batches: the next chunks know
            with self.lock:
                self._expected -= done.completed + done.dropped + failed - count
        handing = self
        try:
            for runner, figures in zip(self.tail, done.tail, strict=True):
                handing.fanout.count(figures.items_in)
                runner.settle(figures)
                handing = runner
            if values:
                handing.fanout.put(0, keys, values, done.nbytes, count)
        except StopStage:
            for runner in self.tail:
                runner.stopping = True
            raise

    def settle(self, figures: TailFigures) -> None:
        """A tail stage's figures for one chunk, as the worker that ran it reports them."""
        errors = figures.errors
        with self.lock:
            self.items_in += figures.items_in
            self.completed += figures.completed
            self.dropped += figures.dropped
            self.errors += len(errors)
            self.busy_s += figures.busy_s
        if errors and self.options.on_error != "skip":
            self._failed(errors[0])
        for failure in errors:
            self._record(failure)

    def _new_keys(self, n: int) -> range:
        with self.lock:
            base = self._out_key
            self._out_key += n
        return range(base, base + n)

    def _record(self, failure: Failure) -> None:
        error = failure.error
        self.execution.record(
            ErrorRecord(
                self.name, failure.key, type(error).__name__, shorten(str(error)), failure.traceback
            )
        )

    def _failed(self, failure: Failure) -> None:
        self._record(failure)
        if self.options.on_error != "skip":
            error = failure.error
            self.execution.fail(
                deliver(error, stage=self.name, index=failure.key, tb_text=failure.traceback)
            )
            raise Cancelled

    def stream_failed(self, error: BaseException, tb: str) -> None:
        with self.lock:
            self.errors += 1
        self._failed(Failure(getattr(self._local, "key", None), error, tb))  # type: ignore[arg-type]

    def setup_failed(self, error: BaseException, tb: str, key: int | None = None) -> None:
        """The stage cannot go on (its setup failed, or its workers crash in a loop). An
        error with an item (``key``: the item a crash loop ended on) counts in ``errors``."""
        if key is not None:
            with self.lock:
                self.errors += 1
        self.execution.record(
            ErrorRecord(self.name, key, type(error).__name__, shorten(str(error)), tb)
        )
        self.execution.fail(deliver(error, stage=self.name, index=key, tb_text=tb))

    # --- stream stages: outputs are gathered into chunks per worker -------------------------

    def emit(self, value: Any) -> None:
        local = self._local
        pending: list[Any] | None = getattr(local, "pending", None)
        if pending is None:
            pending = local.pending = []
            local.pending_keys = []
            local.pending_since = time.perf_counter()
            local.pending_bytes = 0
        pending.append(value)
        local.pending_keys.append(getattr(local, "key", -1))
        if self.fanout.counts_bytes:
            local.pending_bytes += item_nbytes(value)
        if (
            len(pending) >= self.max_chunk
            or local.pending_bytes >= CHUNK_BYTES
            or time.perf_counter() - local.pending_since > EMIT_S
        ):
            self.flush()

    def flush(self) -> None:
        """Hand on the outputs this worker has gathered."""
        local = self._local
        values: list[Any] | None = getattr(local, "pending", None)
        if not values:
            return
        keys: Sequence[int] = local.pending_keys
        size = local.pending_bytes if self.fanout.counts_bytes else 0
        local.pending = None
        if self.kind not in KEY_KEEPING:
            keys = self._new_keys(len(values))
        self.fanout.put(0, keys, values, size)

    # --- the end of the stage -------------------------------------------------------------

    def stop(self) -> None:
        """Nobody reads this stage any more: stop taking input, let the producers know."""
        self.stopping = True
        if self.inbox is not None:
            self.inbox.detach()

    def worker_exited(self) -> None:
        with self.lock:
            self._live -= 1
            live = self._live
        if self.kind in STREAM_KINDS and live == 0 and not self.execution.state.cancelled:
            if not self.input_ended:
                self.stop()  # the function returned early (take): upstream may stop
            self._end()
        self._maybe_end()

    def _maybe_end(self) -> None:
        with self.lock:
            ready = (
                self.kind in CALL_KINDS
                and self.input_ended
                and self._delivered == self._taken
                and not self._emitting
            )
        if ready:
            self._end()

    def _end(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            self.ended = time.perf_counter()
        self.fanout.close()

    @property
    def seed(self) -> int:
        return self.execution.seed

    @property
    def start_method(self) -> str | None:
        return self.execution.start_method

    @property
    def shm_budget(self) -> int:
        return self.execution.shm_budget

    def on_cancel(self, callback: Callable[[], None]) -> None:
        self.execution.state.on_cancel(callback)

    # --- sources --------------------------------------------------------------------------

    def run_source(self, iterable: Iterable[Any]) -> None:
        """Read the source in chunks (see `SourceReader`) and hand each on."""
        reader: SourceReader | None = None
        key = 0
        try:
            reader = SourceReader(iterable, self.fanout.counts_bytes)
            while True:
                values, size, error = reader.pull()
                if values:
                    n = len(values)
                    self.items_in += n
                    self.completed += n
                    self.fanout.put(0, range(key, key + n), values, size)
                    key += n
                if error is not None:
                    raise error
                if not values:
                    break
            self._end()
        except (Cancelled, StopStage):
            pass
        except BaseException as exc:
            self.items_in += 1  # the failed pull counts as an item, ended in an error
            self.errors += 1
            with contextlib.suppress(Cancelled):  # the failure is on its way to the consumer
                self._failed(Failure(key, exc, format_traceback(exc)))
        finally:
            if reader is not None:
                self.busy_s = reader.busy_s
                close = getattr(reader.iterator, "close", None)
                if close is not None and reader.iterator is not iterable:
                    with contextlib.suppress(Exception):  # a generator that fails to close
                        close()
            self.ended = self.ended or time.perf_counter()

    # --- figures --------------------------------------------------------------------------

    @property
    def items_out(self) -> int:
        return self.fanout.out

    def snapshot(self, now: float, closed: bool) -> StageSnapshot:
        """The stage's figures. Every item handed to the stage counts in ``items_in`` and
        ends once in ``completed``, ``dropped``, ``errors`` or (the run ended first)
        ``cancelled``: items the stage's input discarded or refused, those left in it when
        the run closed, and those in flight."""
        items_in = self.items_in
        inbox = self.inbox
        if inbox is not None:
            items_in += inbox.discarded + inbox.refused + (inbox.fill if closed else 0)
        completed = self.completed
        if self.kind in STREAM_KINDS:
            completed = max(0, self.items_in - self.errors - self.unused)
        cancelled = 0
        if self.done or closed:
            cancelled = max(0, items_in - completed - self.dropped - self.errors)
        elapsed = max((self.ended or now) - self.started, 1e-9)
        channels = self.fanout.channels()
        blocked = sum(c.blocked_s for c in channels)
        starved = self.inbox.starved_s if self.inbox is not None else 0.0
        busy = self.busy_s
        if self.kind in STREAM_KINDS:
            busy = max(0.0, elapsed * self.options.workers - starved - blocked)
        return StageSnapshot(
            name=self.name,
            kind=self.kind,
            backend=self.backend,
            workers=self.options.workers,
            items_in=items_in,
            items_out=self.items_out,
            completed=completed,
            dropped=self.dropped,
            errors=self.errors,
            cancelled=cancelled,
            busy_s=busy,
            starved_s=starved,
            blocked_s=blocked,
            items_per_s=(self.completed if self.kind == "sink" else self.items_out) / elapsed,
            fill=max((c.fill for c in channels), default=0),
            peak_fill=max((c.peak_fill for c in channels), default=0),
            capacity=max((c.capacity for c in channels), default=self.options.capacity),
            done=self.done,
        )


class Execution:
    """One run of a plan: start it, read its terminal channels, fail or cancel it, close it."""

    def __init__(
        self,
        plan: Plan,
        terminals: Sequence[tuple[Node, int]],
        *,
        sources: dict[Node, Callable[[], Iterable[Any]]],
        seed: int | None = None,
        start_method: str | None = None,
        memory: int | None = None,
        engine: RayEngine | None = None,
    ) -> None:
        self.plan = plan
        self.start_method = start_method
        # The engine decides where process stages run (Ray actors, or local processes).
        self.backends = BACKENDS if engine is None else engine.backends(BACKENDS)
        # The shared-memory budget of each process that sends arrays: the parent and every
        # worker of each process stage (a stage's workers pool theirs: `_shm.StagePool`).
        senders = sum(n.options.workers + 1 for n in plan.nodes if n.options.backend == "process")
        budget = default_budget() if memory is None else memory
        self.shm_budget = budget // max(1, senders)
        self.state = RunState()
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(63)
        self.failure: BaseException | None = None
        self.errors: list[ErrorRecord] = []
        self.closed = False  # no new reads: `close` began
        self._closed_all = False  # and waited for every stage
        self._lock = threading.Lock()
        self._sources = sources
        self.runners = {
            node: StageRunner(self, node, plan.names[node], plan.position[node])
            for node in plan.nodes
        }
        self.outlets: list[Channel] = []
        self._fuse_tails(terminals)
        self._wire(terminals)
        self.started = time.perf_counter()
        self.ended: float | None = None

    def _fuse_tails(self, terminals: Sequence[tuple[Node, int]]) -> None:
        """Give each process map or filter the cheap stages after it that its workers can run
        (a `Tail`): inline maps and filters (not timed), then a ``batch`` that stacks or
        lists. Each must be the only consumer of the stage before it; a function that cannot
        be pickled stays in this program."""
        if not self.backends["process"].runs_tail:
            return
        ends = {node for node, _ in terminals}
        consumers = self.plan.consumers

        def next_stage(node: Node) -> Node | None:
            if node in ends or node.ports != 1 or len(consumers[node][0]) != 1:
                return None
            return consumers[node][0][0][0]

        for node in self.plan.nodes:
            opts = node.options
            if opts.backend != "process" or node.kind not in ("map", "filter"):
                continue
            chain: list[Node] = []
            last = node
            while (after := next_stage(last)) is not None and fused(after):
                if after.kind not in ("map", "filter") or after.options.timeout is not None:
                    break
                chain.append(after)
                last = after
            batch = next_stage(last)
            if batch is not None and not (
                batch.kind == "batch"
                and batch.args.get("collate", 0) in ("auto", None)
                and opts.timeout is None
            ):
                batch = None
            if not chain and batch is None:
                continue
            runners = [self.runners[n] for n in chain]
            stages = [
                TailStage(r.name, r.kind, r.fn, r.options, r.position, self.seed) for r in runners
            ]
            size = batch.args["size"] if batch is not None else 0
            batching = (size, batch.args["collate"]) if batch is not None else None
            try:
                spec = dumps_keeping_files((stages, batching))
            except Exception:  # a function that cannot travel runs here, as before
                continue
            runner = self.runners[node]
            runner.tail_spec, runner.tail, runner.batch_size = spec, runners, size
            runner.tail_names = [r.name for r in runners]
            for r in runners:
                r.in_workers_of = runner
            if batch is not None:
                self.runners[batch].collated = True

    def _wire(self, terminals: Sequence[tuple[Node, int]]) -> None:
        for node, runner in self.runners.items():
            if node.kind == "source" or fused(node):
                continue
            runner.inbox = self._channel(
                [parent.options for parent, _ in node.inputs],
                ZipChannel if node.kind == "zip" else Channel,
                node.args.get("n"),  # a take: its source need not read ahead past n
            )
        for node, runner in self.runners.items():
            for port, consumers in enumerate(self.plan.consumers[node]):
                for consumer, slot in consumers:
                    target = self.runners[consumer]
                    inlet: Target
                    if fused(consumer):
                        inlet = FusedInlet(target)
                    else:
                        assert target.inbox is not None
                        inlet = Inlet(target.inbox, slot)
                    runner.fanout.add(port, inlet)
        for node, port in terminals:
            channel = self._channel([node.options], Channel)
            self.runners[node].fanout.add(port, Inlet(channel, 0))
            self.outlets.append(channel)

    def _channel(
        self, feeders: list[StageOptions], kind: type[Channel], most: int | None = None
    ) -> Channel:
        """The channel fed by stages with these options: the largest of their bounds (and at
        most ``most`` items)."""
        bounds = [o.byte_bound for o in feeders]
        capacity = max(o.capacity for o in feeders)
        return kind(
            max(1, min(capacity, most)) if most is not None else capacity,
            self.state,
            producers=len(feeders),
            byte_bound=None if None in bounds else max(b for b in bounds if b is not None),
            min_items=2,
        )

    def start(self) -> None:
        """Start every stage, consumers before producers, sources last."""
        for node in reversed(self.plan.nodes):
            runner = self.runners[node]
            if node.kind == "source":
                continue
            if runner.in_workers_of is not None:
                runner.workers = InWorkers()
                continue
            runner.workers = self.backends[node.options.backend].start(runner)
        for node in self.plan.nodes:
            if node.kind == "source":
                runner = self.runners[node]
                runner.thread = Daemon(
                    runner.run_source, (self._sources[node](),), f"headrace-{runner.name}"
                )
                runner.thread.start()

    def record(self, record: ErrorRecord) -> None:
        with self._lock:
            self.errors.append(record)

    def fail(self, error: BaseException) -> None:
        """The first failure wins; it cancels the run and reaches the consumer."""
        with self._lock:
            if self.failure is None:
                self.failure = error
        self.state.cancel()

    def get(self, outlet: int = 0) -> Any:
        """The next chunk's values of a terminal stream, or END; raises the run's failure."""
        if self.closed and self.failure is None:
            raise ClosedError("this run is closed; start a new one by iterating the stream again")
        try:
            got = self.outlets[outlet].get()
        except Cancelled:
            if self.failure is not None:
                raise self.failure from self.failure.__cause__
            raise ClosedError("this run was cancelled") from None
        return got if got is END else got[1]

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Stop every stage and wait for its workers; True if all of them ended in time. A
        close interrupted (a Ctrl-C while it waits) is not done: the next one waits again."""
        if self._closed_all:
            return True
        self.closed = True
        self.ended = self.ended or time.perf_counter()
        self.state.cancel()
        deadline = time.monotonic() + timeout
        ok = True
        for runner in self.runners.values():
            remaining = max(0.0, deadline - time.monotonic())
            if runner.thread is not None and runner.thread is not threading.current_thread():
                ok = runner.thread.wait_end(remaining) and ok
            if runner.workers is not None:
                ok = runner.workers.join(remaining) and ok
        self._closed_all = True
        return ok

    def snapshot(self) -> tuple[float, list[StageSnapshot]]:
        now = time.perf_counter()
        wall = (self.ended or now) - self.started
        return wall, [r.snapshot(now, self.closed) for r in self.runners.values()]
