"""The runner: executes a compiled plan. Written once; backends only start workers.

    source thread --put--> [Channel] --next_task()--> workers --finish()--> reorder --emit-->
                                                                            [Channel] / fused stage

Owns: `Execution` (one run: stage runners, channels, cancel, failure, close, figures) and
`StageRunner` (one stage: takes tasks from its input channel under a bound on items in flight,
restores input order, applies the error policy, counts, emits to its consumers, ends the
stream). Imports graph, stages, transport and backends; nothing above it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ._backends._base import Backend, Outcome, Task, Workers, item_entropy, set_item
from ._backends._inline import InlineBackend
from ._backends._process import ProcessBackend
from ._backends._thread import ThreadBackend
from ._errors import ClosedError, deliver, format_traceback, shorten
from ._graph import Node, Plan
from ._shm import default_budget
from ._stages import CALL_KINDS, KEY_KEEPING, STREAM_KINDS, StageOptions
from ._transport import END, Cancelled, Channel, RunState, StopStage, ZipChannel, nbytes
from ._types import ErrorRecord, StageSnapshot

#: Seconds `Execution.close` waits for workers before giving up on them (RELIABILITY 3).
CLOSE_TIMEOUT = 5.0
#: Seconds a failing run waits for its workers before the error is raised: enough for every
#: worker blocked in headrace to exit; a thread inside a long user call ends when it returns.
ERROR_GRACE = 0.25

BACKENDS: dict[str, Backend] = {
    "inline": InlineBackend(),
    "thread": ThreadBackend(),
    "process": ProcessBackend(),
}


def fused(node: Node) -> bool:
    """An inline call stage runs in the thread that produces its input."""
    return node.kind in CALL_KINDS and node.options.backend == "inline"


class Inlet:
    """One producer's end of a channel."""

    def __init__(self, channel: Channel, producer: int) -> None:
        self.channel = channel
        self.producer = producer

    def put(self, item: Any) -> bool:
        return self.channel.put(item, self.producer)

    def put_many(self, items: list[Any]) -> int:
        return self.channel.put_many(items, self.producer)

    def close(self) -> None:
        self.channel.close(self.producer)

    @property
    def detached(self) -> bool:
        return self.channel.detached


class FusedInlet:
    """The input of a fused stage: a put runs the stage on the item at once."""

    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    def put(self, item: Any) -> bool:
        return self.runner.push(item)

    def put_many(self, items: list[Any]) -> int:
        for done, item in enumerate(items):
            if not self.runner.push(item):
                return done
        return len(items)

    def close(self) -> None:
        self.runner.input_closed()

    @property
    def detached(self) -> bool:
        return self.runner.stopping


Target = Inlet | FusedInlet


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
        self.outputs: list[list[Target]] = [[] for _ in range(node.ports)]
        self.workers: Workers | None = None
        self.thread: threading.Thread | None = None  # sources only
        self.lock = threading.Lock()  # finishing, reordering, emitting
        self._take_lock = threading.Lock()  # taking from the input
        self._slots = threading.Condition()
        execution.state.register(self._slots)
        backend = BACKENDS[node.options.backend]
        # items (and array bytes) taken but not yet emitted
        self._capacity, self._window_bytes = backend.window(node.options)
        self._in_flight_bytes = 0
        self._slot_waiters = 0
        self._local = threading.local()
        self._ordered = node.options.ordered and node.options.workers > 1
        self._pending: dict[int, Outcome] = {}
        self._held: dict[int, list[Any]] | None = None  # outputs of a batch, by port
        self._next_seq = 0
        self._taken = 0
        self._resolved = 0
        self._in_flight = 0
        self._out_key = 0
        self._live = node.options.workers
        self.input_ended = False
        self.stopping = False
        self.done = False
        self.items_in = self.items_out = self.completed = self.dropped = self.errors = 0
        self.busy_s = 0.0
        self.started = time.perf_counter()
        self.ended: float | None = None

    # --- taking input ---------------------------------------------------------------------

    def next_task(self) -> Task | None:
        tasks = self.next_tasks(1)
        return tasks[0] if tasks else None

    def next_tasks(self, limit: int, block: bool = True) -> list[Task] | None:
        """Up to ``limit`` tasks, each taken under the in-flight window. Waits for the first
        only when ``block`` (else returns what is there now, maybe ``[]``, also when another
        worker is taking); None once the input has ended or the stage stops."""
        if not self._take_lock.acquire(blocking=block):
            return []
        tasks: list[Task] = []
        try:
            while len(tasks) < limit and not (self.input_ended or self.stopping):
                wait = block and not tasks
                with self._slots:
                    while self._window_full():
                        if not wait:
                            return tasks
                        if self.execution.state.cancelled:
                            raise Cancelled
                        self._slot_waiters += 1
                        try:
                            self._slots.wait()
                        finally:
                            self._slot_waiters -= 1
                    room = min(self._capacity - self._in_flight, limit - len(tasks))
                    if self._window_bytes and self._in_flight_bytes * 16 >= self._window_bytes:
                        room = 1  # arrays in flight: one at a time, so bytes stay bounded
                    self._in_flight += room  # reserved; what is not taken is given back
                assert self.inbox is not None
                items = self.inbox.get_many(room, wait)
                if items is END or len(items) < room:
                    self._release(0, room - (0 if items is END else len(items)))
                if items is END:
                    with self.lock:
                        self.input_ended = True
                        self._maybe_finish()
                    break
                for key, value in items:
                    size = nbytes(value) if self._window_bytes else 0
                    if size:
                        with self._slots:
                            self._in_flight_bytes += size
                    tasks.append(Task(self._taken, key, value, size))
                    self._taken += 1
                self.items_in += len(items)
                if len(items) < room:
                    break  # the channel is empty for now
        finally:
            self._take_lock.release()
        return tasks if tasks or not (self.input_ended or self.stopping) else None

    def set_window(self, items: int) -> None:
        """Change how many items the stage may hold in flight (a backend that learns its items
        are large keeps fewer of them)."""
        with self._slots:
            self._capacity = max(items, self.options.workers)
            if self._slot_waiters:
                self._slots.notify_all()

    def _window_full(self) -> bool:
        if self._in_flight >= self._capacity:
            return True
        return (
            self._window_bytes is not None
            and self._in_flight_bytes >= self._window_bytes
            and self._in_flight >= self.options.workers
        )

    def _release(self, size: int = 0, items: int = 1) -> None:
        with self._slots:
            self._in_flight -= items
            self._in_flight_bytes -= size
            if self._slot_waiters:
                self._slots.notify()

    def stream_inputs(self) -> Iterator[Any]:
        assert self.inbox is not None
        while True:
            with self._take_lock:
                if self.input_ended or self.stopping:
                    return
                item = self.inbox.get()
                if item is END:
                    self.input_ended = True
                    return
                self.items_in += 1
            self._local.key = item[0]
            self.item_context(item[0])
            yield item[1]

    def push(self, item: Any) -> bool:
        """Fused input: run the stage on ``item`` in the producer's thread."""
        if self.execution.state.cancelled:
            raise Cancelled
        if self.stopping:
            return False
        task = Task(self._taken, item[0], item[1])
        self._taken += 1
        self.items_in += 1
        assert self.workers is not None
        context = item_entropy()  # the producer's item, restored for its own rng() calls
        try:
            self.workers.push(task)
        except StopStage:
            return False
        finally:
            if context is not None:
                set_item(*context)
        return True

    def input_closed(self) -> None:
        with self.lock:
            self.input_ended = True
            self._maybe_finish()

    # --- finishing items ------------------------------------------------------------------

    def finish(self, outcome: Outcome) -> None:
        with self.lock:
            self._finish(outcome)
            self._maybe_finish()

    def finish_many(self, outcomes: list[Outcome]) -> None:
        """`finish` for a batch: one lock, and each output channel takes the batch's outputs
        in one go (one wake-up of its consumer instead of one per item)."""
        with self.lock:
            self._held = {}
            try:
                for outcome in outcomes:
                    self._finish(outcome)
            finally:
                held, self._held = self._held, None
                self._flush(held)
            self._maybe_finish()

    def _finish(self, outcome: Outcome) -> None:
        self.busy_s += outcome.busy_s
        if not self._ordered or (outcome.error and self.options.on_error == "raise"):
            self._resolve(outcome)  # a failure that ends the run does not wait its turn
        else:
            self._pending[outcome.task.seq] = outcome
            while self._next_seq in self._pending:
                self._resolve(self._pending.pop(self._next_seq))

    def _resolve(self, outcome: Outcome) -> None:
        self._next_seq += 1
        try:
            if outcome.error is not None:
                self.errors += 1
                self._failed(outcome.error, outcome.traceback, outcome.task.key)
            elif outcome.outputs:
                for out in outcome.outputs:
                    if self.kind == "route":
                        self._emit(out[0], outcome.task.key, out[1])
                    else:
                        self._emit(0, outcome.task.key, out)
                self.completed += 1
            elif self.kind in ("filter", "route"):
                self.dropped += 1
            else:
                self.completed += 1
        finally:
            self._resolved += 1
            if not fused(self.node):
                self._release(outcome.task.nbytes)

    def _failed(self, error: BaseException, tb: str, key: int | None) -> None:
        record = ErrorRecord(self.name, key, type(error).__name__, shorten(str(error)), tb)
        self.execution.record(record)
        if self.options.on_error != "skip":
            self.execution.fail(deliver(error, stage=self.name, index=key, tb_text=tb))
            raise Cancelled

    def stream_failed(self, error: BaseException, tb: str) -> None:
        with self.lock:
            self.errors += 1
            self._failed(error, tb, getattr(self._local, "key", None))

    def setup_failed(self, error: BaseException, tb: str, key: int | None = None) -> None:
        """The stage cannot go on (its setup failed, or its workers crash in a loop)."""
        self.execution.record(
            ErrorRecord(self.name, key, type(error).__name__, shorten(str(error)), tb)
        )
        self.execution.fail(deliver(error, stage=self.name, index=key, tb_text=tb))

    def emit(self, value: Any) -> None:
        with self.lock:
            self._emit(0, self._local.key if self.kind in KEY_KEEPING else -1, value)

    def _emit(self, port: int, key: int, value: Any) -> None:
        if self.kind not in KEY_KEEPING:
            key = self._out_key
            self._out_key += 1
        if self._held is not None:
            self._held.setdefault(port, []).append((key, value))
            return
        delivered = False
        for target in self.outputs[port]:
            delivered = target.put((key, value)) or delivered
        if delivered:
            self.items_out += 1
        elif all(t.detached for targets in self.outputs for t in targets):
            self.stop()
            raise StopStage

    def _flush(self, held: dict[int, list[Any]]) -> None:
        """Deliver the outputs held back by `finish_many`."""
        for port, items in held.items():
            delivered = max((t.put_many(items) for t in self.outputs[port]), default=0)
            self.items_out += delivered
            if delivered == 0 and all(t.detached for ts in self.outputs for t in ts):
                self.stop()
                raise StopStage

    def stop(self) -> None:
        """Nobody reads this stage any more: stop taking input, let the producers know."""
        self.stopping = True
        if self.inbox is not None:
            self.inbox.detach()

    def worker_exited(self) -> None:
        with self.lock:
            self._live -= 1
            if self.kind in STREAM_KINDS and self._live == 0 and not self.execution.state.cancelled:
                if not self.input_ended:
                    self.stop()  # the function returned early (take): upstream may stop
                self._end()
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.kind in CALL_KINDS and self.input_ended and self._resolved == self._taken:
            self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        self.ended = time.perf_counter()
        for targets in self.outputs:
            for target in targets:
                target.close()

    def item_context(self, key: int) -> None:
        set_item(self.execution.seed, self.position, key)

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
        iterator: Iterator[Any] | None = None
        key = 0
        try:
            iterator = iter(iterable)
            while True:
                start = time.perf_counter()
                try:
                    value = next(iterator)
                except StopIteration:
                    break
                finally:
                    self.busy_s += time.perf_counter() - start
                self.items_in += 1
                self._emit(0, key, value)
                self.completed += 1
                key += 1
            self._end()
        except (Cancelled, StopStage):
            pass
        except BaseException as exc:
            self.items_in += 1  # the failed pull counts as an item, ended in an error
            self.errors += 1
            with contextlib.suppress(Cancelled):  # the failure is on its way to the consumer
                self._failed(exc, format_traceback(exc), key)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None and iterator is not iterable:
                with contextlib.suppress(Exception):  # a generator that fails to close
                    close()
            self.ended = self.ended or time.perf_counter()

    # --- figures --------------------------------------------------------------------------

    def snapshot(self, now: float, closed: bool) -> StageSnapshot:
        items_in = self.items_in + (self.inbox.discarded if self.inbox is not None else 0)
        completed = self.completed
        if self.kind in STREAM_KINDS:
            completed = max(0, self.items_in - self.errors)
        cancelled = 0
        if self.done or closed:
            cancelled = max(0, items_in - completed - self.dropped - self.errors)
        elapsed = max((self.ended or now) - self.started, 1e-9)
        channels = [t.channel for targets in self.outputs for t in targets if isinstance(t, Inlet)]
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
    ) -> None:
        self.plan = plan
        self.start_method = start_method
        # The shared-memory budget of each process that sends arrays: the parent and every
        # worker of each process stage.
        senders = sum(n.options.workers + 1 for n in plan.nodes if n.options.backend == "process")
        budget = default_budget() if memory is None else memory
        self.shm_budget = budget // max(1, senders)
        self.state = RunState()
        self.seed = seed if seed is not None else secrets.randbits(63)
        self.failure: BaseException | None = None
        self.errors: list[ErrorRecord] = []
        self.closed = False
        self._lock = threading.Lock()
        self._sources = sources
        self.runners = {
            node: StageRunner(self, node, plan.names[node], plan.position[node])
            for node in plan.nodes
        }
        self.outlets: list[Channel] = []
        self._wire(terminals)
        self.started = time.perf_counter()
        self.ended: float | None = None

    def _wire(self, terminals: Sequence[tuple[Node, int]]) -> None:
        for node, runner in self.runners.items():
            if node.kind == "source" or fused(node):
                continue
            runner.inbox = self._channel(
                [parent.options for parent, _ in node.inputs],
                ZipChannel if node.kind == "zip" else Channel,
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
                    runner.outputs[port].append(inlet)
        for node, port in terminals:
            channel = self._channel([node.options], Channel)
            self.runners[node].outputs[port].append(Inlet(channel, 0))
            self.outlets.append(channel)

    def _channel(self, feeders: list[StageOptions], kind: type[Channel]) -> Channel:
        """The channel fed by stages with these options: the largest of their bounds."""
        bounds = [o.byte_bound for o in feeders]
        return kind(
            max(o.capacity for o in feeders),
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
            runner.workers = BACKENDS[node.options.backend].start(runner)
        for node in self.plan.nodes:
            if node.kind == "source":
                runner = self.runners[node]
                runner.thread = threading.Thread(
                    target=runner.run_source,
                    args=(self._sources[node](),),
                    name=f"headrace-{runner.name}",
                    daemon=True,
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
        """The next item of a terminal stream, or END; raises the run's failure."""
        if self.closed and self.failure is None:
            raise ClosedError("this run is closed; start a new one by iterating the stream again")
        try:
            item = self.outlets[outlet].get()
        except Cancelled:
            if self.failure is not None:
                raise self.failure from self.failure.__cause__
            raise ClosedError("this run was cancelled") from None
        return item if item is END else item[1]

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Stop every stage and wait for its workers; True if all of them ended in time."""
        if self.closed:
            return True
        self.closed = True
        self.ended = self.ended or time.perf_counter()
        self.state.cancel()
        deadline = time.monotonic() + timeout
        ok = True
        for runner in self.runners.values():
            remaining = max(0.0, deadline - time.monotonic())
            if runner.thread is not None and runner.thread is not threading.current_thread():
                runner.thread.join(remaining)
                ok = ok and not runner.thread.is_alive()
            if runner.workers is not None:
                ok = runner.workers.join(remaining) and ok
        return ok

    def snapshot(self) -> tuple[float, list[StageSnapshot]]:
        now = time.perf_counter()
        wall = (self.ended or now) - self.started
        return wall, [r.snapshot(now, self.closed) for r in self.runners.values()]
