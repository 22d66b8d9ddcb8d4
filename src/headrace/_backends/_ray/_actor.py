"""What runs in a Ray actor: `StageActor` (one stage at a time: its calls, or its stream
in a thread of its own, `ActorStream`) and `ActorLogs` (its log records, for the driver).
Imports no Ray: Ray imports this module in the actor's process."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from ..._errors import format_traceback
from ..._stages import STREAM_KINDS, StageOptions
from ..._transport import Cancelled, StopStage, nbytes
from .._base import Caller, Chunk, dump_error, instantiate, log_fields, run_stream, set_item

#: Seconds an actor left idle by a finished run is kept for the next run (starting one takes a
#: second or more); it then exits. One idle longer than IDLE_S - IDLE_MARGIN_S is not reused.
IDLE_S = 60.0
#: Input chunks a stream stage's actor holds beyond the one its function reads (it never waits
#: for the driver's next `put`).
INBOX = 2
#: Outputs of a stream stage an actor gathers into one answer at most, and the seconds it
#: keeps the first one waiting for more (as the process backend's workers do).
MAX_BATCH = 256
FLUSH_S = 0.005
#: Outputs (and bytes of their arrays) a stream stage's actor holds before its function waits
#: for the driver to take them (at least one output is held), and the bytes that make a batch.
MAX_HELD = 4 * MAX_BATCH
MAX_HELD_BYTES = 32 * 2**20
BATCH_BYTES = 4 * 2**20
#: Log records an actor keeps for the driver between two answers (the oldest go beyond it).
MAX_LOGS = 10_000


@dataclass(frozen=True)
class Spec:
    """What an actor needs to run a stage (the `StageWork` fields the `Caller` reads)."""

    name: str
    kind: str
    fn: bytes
    options: StageOptions
    ports: int
    position: int
    seed: int
    log_level: int = logging.WARNING
    #: The stage's run (`StageActor.end_job` ends only its own job).
    token: str = ""


class StageActor:
    """The body of one actor: it runs one stage at a time (`job`), then waits idle for the next
    run's, and exits after `IDLE_S` seconds without one.

    Every answer is a tuple whose last element is the `logging` records made in the actor
    since the last answer (as dicts, for the driver's handlers). `job` makes the stage's
    function (a class is instantiated once per actor; a stream stage's function starts in a
    thread of its own) and answers ("ready", pid) or ("setup", error, traceback). A call
    stage's `run` answers ("done", outputs per port, completed, dropped, failures, busy
    seconds) with each failure as (index, exception bytes, traceback text). A stream stage's
    input comes by `put`, its outputs go by `take`; a stream actor runs its calls on more than
    one thread (`put` and `take` wait)."""

    def __init__(self) -> None:
        self.caller: Caller | None = None
        self.token = ""
        self.stream: ActorStream | None = None
        self.setup: tuple[bytes, str] | None = None
        self.last = time.monotonic()
        self.busy = False
        self.logs = ActorLogs()
        threading.Thread(target=self._exit_when_idle, daemon=True).start()

    def _exit_when_idle(self) -> None:
        while True:
            time.sleep(1.0)
            if not self.busy and time.monotonic() - self.last > IDLE_S:
                os._exit(0)

    def job(self, spec: Spec) -> tuple[Any, ...]:
        self.last = time.monotonic()
        self.busy = True
        if self.stream is not None:  # an earlier job's (its end_job may come after this)
            self.stream.stop()
        self.caller, self.stream, self.setup = None, None, None
        self.token = spec.token
        root = logging.getLogger()
        root.handlers[:] = [self.logs]  # the driver's handlers get them (and not Ray's log)
        self.logs.take()  # records made while idle belong to no stage
        root.setLevel(spec.log_level)
        try:
            fn = cloudpickle.loads(spec.fn)
            if spec.kind in STREAM_KINDS:  # the function is made in its own thread
                self.stream = ActorStream(spec, fn)
            else:
                self.caller = Caller(spec, instantiate(fn))  # type: ignore[arg-type]
        except BaseException as exc:
            self.setup = (dump_error(exc), format_traceback(exc))
            return ("setup", *self.setup, self.logs.take())
        return ("ready", os.getpid(), self.logs.take())

    def end_job(self, token: str) -> None:
        """The run is over: drop the stage's function (and what it holds). A stream actor
        runs its calls on several threads, out of order: the next run's `job` may come first,
        and then this one is not for the job it runs."""
        if token != self.token:
            return
        if self.stream is not None:
            self.stream.stop()
        self.caller = self.stream = self.setup = None
        self.busy = False
        self.last = time.monotonic()

    def pid(self) -> int:
        return os.getpid()

    def run(self, seq: int, keys: Sequence[int], values: list[Any]) -> tuple[Any, ...]:
        self.last = time.monotonic()
        if self.caller is None:
            assert self.setup is not None
            return ("setup", *self.setup, self.logs.take())
        done = self.caller.run(Chunk(seq, keys, values))
        errors = [(f.key, dump_error(f.error), f.traceback) for f in done.errors]
        outputs = [(list(k), v) for k, v in done.outputs]
        self.last = time.monotonic()
        answer = ("done", outputs, done.completed, done.dropped, errors, done.busy_s)
        return (*answer, self.logs.take())

    def put(self, keys: Sequence[int] | None, values: list[Any] | None) -> tuple[Any, ...]:
        """A stream stage's next input chunk (None: its input has ended); answers whether its
        function has returned (it takes no more)."""
        self.last = time.monotonic()
        stream = self.stream
        finished = stream is None or stream.put(keys, values)
        return ("put", finished, self.logs.take())

    def take(self, wait_s: float) -> tuple[Any, ...]:
        """A stream stage's outputs so far, its failures, and whether it has finished."""
        self.last = time.monotonic()
        stream = self.stream
        if stream is None:
            return ("stream", [], [], True, self.logs.take())
        outputs, events, finished = stream.take(wait_s)
        return ("stream", outputs, events, finished, self.logs.take())


class ActorStream:
    """A stream stage (transform) inside an actor, as `run_stream` sees it (`StageWork`): its
    function runs in a thread of its own, reading the chunks `put` brings and gathering its
    outputs for `take`. Both sides wait on one condition: `put` while `INBOX` chunks wait to be
    read, the function while `MAX_HELD` outputs wait to be taken (backpressure both ways)."""

    start_method = None
    shm_budget = 0

    def __init__(self, spec: Spec, fn: Any) -> None:
        self.name = spec.name
        self.kind = spec.kind
        self.fn = fn
        self.options = spec.options
        self.ports = spec.ports
        self.position = spec.position
        self.seed = spec.seed
        self._cond = threading.Condition(threading.Lock())
        self._inbox: deque[tuple[Sequence[int], list[Any]] | None] = deque()
        self._outputs: list[Any] = []
        self._held_bytes = 0
        self._first = 0.0  # when the oldest output waiting to be taken was made
        self._events: list[tuple[str, bytes, str]] = []
        self._finished = False
        self._stopped = False
        self._thread = threading.Thread(target=self._main, name="headrace-stream", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        with contextlib.suppress(Cancelled, StopStage):
            run_stream(self)  # type: ignore[arg-type]
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    # the driver's side (`StageActor.put`, `take`, `end_job`)

    def put(self, keys: Sequence[int] | None, values: list[Any] | None) -> bool:
        with self._cond:
            while len(self._inbox) >= INBOX and not (self._finished or self._stopped):
                self._cond.wait()
            if not self._finished:
                self._inbox.append(None if keys is None or values is None else (keys, values))
                self._cond.notify_all()
            return self._finished

    def take(self, wait_s: float) -> tuple[list[Any], list[tuple[str, bytes, str]], bool]:
        deadline = time.monotonic() + wait_s
        with self._cond:
            while not (
                self._events
                or self._finished
                or len(self._outputs) >= MAX_BATCH
                or self._held_bytes >= BATCH_BYTES
            ):
                now = time.monotonic()
                if self._outputs and now - self._first >= FLUSH_S:
                    break
                wait = deadline - now
                if self._outputs:
                    wait = min(wait, self._first + FLUSH_S - now)
                if wait <= 0:
                    break
                self._cond.wait(wait)
            outputs, self._outputs = self._outputs, []
            self._held_bytes = 0
            events, self._events = self._events, []
            self._cond.notify_all()  # the function may go on emitting
            return outputs, events, self._finished

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # the function's side (`run_stream`)

    def stream_inputs(self) -> Iterator[Any]:
        while True:
            with self._cond:
                while not self._inbox:
                    if self._stopped:
                        raise StopStage
                    self._cond.wait()
                got = self._inbox.popleft()
                self._cond.notify_all()
            if got is None:
                return
            keys, values = got
            for key, value in zip(keys, values, strict=True):
                set_item(self.seed, self.position, key)
                yield value

    def emit(self, value: Any) -> None:
        # An output that cannot travel fails here, in the function's loop, as in a worker
        # process (its arrays' buffers are not copied: only the rest is pickled). Plain values
        # always travel: checking each would take most of a small item's time.
        size = 0
        if type(value) not in _PLAIN:
            cloudpickle.dumps(value, protocol=5, buffer_callback=_drop)
            size = nbytes(value)
        with self._cond:
            while (
                self._outputs
                and not self._stopped
                and (len(self._outputs) >= MAX_HELD or self._held_bytes + size > MAX_HELD_BYTES)
            ):
                self._cond.wait()
            if self._stopped:
                raise StopStage
            if not self._outputs:
                self._first = time.monotonic()
            self._outputs.append(value)
            self._held_bytes += size
            if len(self._outputs) >= MAX_BATCH or self._held_bytes >= BATCH_BYTES:
                self._cond.notify_all()

    def flush(self) -> None:
        with self._cond:
            if self._outputs:
                self._first = 0.0  # `take` answers at once
                self._cond.notify_all()

    def stream_failed(self, error: BaseException, tb: str) -> None:
        self._event("failed", error, tb)

    def setup_failed(self, error: BaseException, tb: str, key: int | None = None) -> None:
        self._event("setup", error, tb)

    def _event(self, what: str, error: BaseException, tb: str) -> None:
        with self._cond:
            self._events.append((what, dump_error(error), tb))
            self._cond.notify_all()

    def forward(self) -> None:
        raise AssertionError("pass-through stages run in the driver")


#: Types whose values always pickle.
_PLAIN = frozenset({int, float, complex, bool, str, bytes, type(None)})


def _drop(buffer: Any) -> bool:
    return False  # an out-of-band buffer: not pickled


class ActorLogs(logging.Handler):
    """Keeps an actor's `logging` records for the driver, which hands them to its own
    handlers (as a process worker's records are), with the stage's name."""

    def __init__(self) -> None:
        super().__init__()
        self._records: deque[dict[str, Any]] = deque(maxlen=MAX_LOGS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._records.append(log_fields(record))
        except Exception:
            self.handleError(record)

    def take(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        with contextlib.suppress(IndexError):
            while True:
                records.append(self._records.popleft())
        return records


_actor_class: Any = None
