"""What every backend shares: the task record, the worker body, and the backend interface.

A backend only starts workers and moves items; everything a worker does with an item lives
here, so it is written once:

    runner (StageWork)                      worker (thread / process / actor)
    ------------------                      ---------------------------------
    next_task() -> Task  ----------------->  execute(): call fn, retry, time it
    finish(Outcome)      <-----------------  Outcome(outputs | error + traceback)
    stream_inputs()      ----------------->  run_stream(): fn(iterator) -> outputs
    emit(value)          <-----------------

Must not import the runner or any feature module.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import StageTimeoutError, format_traceback, shorten
from .._stages import StageOptions
from .._transport import Cancelled, StopStage


@dataclass(slots=True)
class Task:
    """One item for one stage: its position in the stage's input, its index, its value (and
    the bytes of array data in it, when the stage's window counts them)."""

    seq: int
    key: int
    value: Any
    nbytes: int = 0


@dataclass(slots=True)
class Outcome:
    """What became of a task: outputs, or an error with the worker's traceback text."""

    task: Task
    outputs: list[Any] | None
    error: BaseException | None = None
    traceback: str = ""
    busy_s: float = 0.0


class StageWork(Protocol):
    """The runner's side of one stage, as its workers see it."""

    name: str
    kind: str
    fn: Any
    options: StageOptions
    ports: int
    position: int

    @property
    def seed(self) -> int: ...
    @property
    def start_method(self) -> str | None: ...
    @property
    def shm_budget(self) -> int: ...

    def next_task(self) -> Task | None: ...
    def next_tasks(self, limit: int, block: bool = True) -> list[Task] | None: ...
    def on_cancel(self, callback: Callable[[], None]) -> None: ...
    def set_window(self, items: int) -> None: ...
    def finish(self, outcome: Outcome) -> None: ...
    def finish_many(self, outcomes: list[Outcome]) -> None: ...
    def stream_inputs(self) -> Iterator[Any]: ...
    def emit(self, value: Any) -> None: ...
    def stream_failed(self, error: BaseException, tb: str) -> None: ...
    def setup_failed(self, error: BaseException, tb: str, key: int | None = None) -> None: ...
    def worker_exited(self) -> None: ...
    def item_context(self, key: int) -> None: ...


class Workers(ABC):
    """The running workers of one stage."""

    @abstractmethod
    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every worker to exit; True if all did."""

    def push(self, task: Task) -> None:
        """Run ``task`` now, in the caller's thread (only backends that run inline)."""
        raise NotImplementedError


class Backend(ABC):
    """Starts the workers of a stage."""

    name: str

    @abstractmethod
    def start(self, work: StageWork) -> Workers: ...

    def window(self, options: StageOptions) -> tuple[int, int | None]:
        """How many items (and bytes of array data, None: not counted) a stage may have taken
        and not yet emitted: one in hand and one in the reorder window per worker."""
        return 2 * options.workers, None


# --- the worker body -----------------------------------------------------------------------


def instantiate(fn: Any) -> Any:
    """A class whose instances are callable is instantiated once per worker (a model loaded
    once); any other callable, ``str`` or ``int`` among them, is called as it is."""
    if isinstance(fn, type) and any("__call__" in vars(k) for k in fn.__mro__[:-1]):
        return fn()
    return fn


def applier(kind: str, ports: int) -> Callable[[Callable[[Any], Any], Any], list[Any]]:
    """The per-item step of a call stage: the function's result as a list of outputs."""
    if kind == "map":
        return lambda fn, value: [fn(value)]
    if kind == "filter":
        return lambda fn, value: [value] if fn(value) else []
    if kind == "flat_map":
        return lambda fn, value: list(fn(value))
    if kind == "sink":

        def sink(fn: Callable[[Any], Any], value: Any) -> list[Any]:
            fn(value)
            return []

        return sink
    if kind == "route":
        return lambda fn, value: [(p, value) for p in branches(fn(value), ports, value)]
    raise ValueError(f"no per-item step for stage kind {kind!r}")


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


def execute(work: StageWork, fn: Any, step: Callable[..., list[Any]], task: Task) -> Outcome:
    """Call the stage function on one task, with retries and the post-hoc timeout check."""
    opts = work.options
    work.item_context(task.key)
    start = time.perf_counter()
    for attempt in range(opts.retries + 1):
        try:
            outputs = step(fn, task.value)
        except BaseException as exc:
            if attempt < opts.retries and isinstance(exc, Exception):
                continue
            return Outcome(task, None, exc, format_traceback(exc), time.perf_counter() - start)
        busy = time.perf_counter() - start
        if opts.timeout is not None and busy > opts.timeout:
            return Outcome(task, None, timeout_error(work.name, task.key, opts.timeout), "", busy)
        return Outcome(task, outputs, busy_s=busy)
    raise AssertionError("unreachable")


def timeout_error(stage: str, key: int, timeout: float) -> StageTimeoutError:
    return StageTimeoutError(
        f"stage {stage!r}: item {key} ran longer than timeout={timeout} s; raise the timeout "
        "or use on_error='skip' to record such items and go on"
    )


def run_calls(work: StageWork, watch: Callable[[Task | None], bool] | None = None) -> None:
    """A call-stage worker: take tasks until the input ends, finish each.

    ``watch(task)`` is told which task the worker starts (and None when it is done with it);
    when it returns False the worker was given up on (timed out) and exits."""
    try:
        fn = instantiate(work.fn)
    except BaseException as exc:
        work.setup_failed(exc, format_traceback(exc))
        return
    step = applier(work.kind, work.ports)
    while (task := work.next_task()) is not None:
        if watch is not None:
            watch(task)
        outcome = execute(work, fn, step, task)
        if watch is not None and not watch(None):
            return
        work.finish(outcome)


def run_stream(work: StageWork) -> None:
    """A stream-stage worker: the function consumes its own sub-stream and yields outputs.

    Under on_error='skip' a failing function is recorded and started again on the rest of
    the sub-stream."""
    try:
        fn = instantiate(work.fn)
    except BaseException as exc:
        work.setup_failed(exc, format_traceback(exc))
        return
    inputs = work.stream_inputs()
    while True:
        try:
            for value in _as_iterable(fn(inputs)):
                work.emit(value)
            return
        except BaseException as exc:
            if isinstance(exc, Cancelled | StopStage):
                raise
            work.stream_failed(exc, format_traceback(exc))
            if work.options.on_error != "skip":
                return


def _as_iterable(result: Any) -> Iterable[Any]:
    if result is None:
        return ()
    return result  # type: ignore[no-any-return]


# --- per-item random generators ---------------------------------------------------------------

_item = threading.local()


def set_item(seed: int, position: int, key: int) -> None:
    _item.entropy = (seed, position, key)
    _item.rng = None


def item_entropy() -> tuple[int, int, int] | None:
    return getattr(_item, "entropy", None)


def item_rng() -> Any:
    return getattr(_item, "rng", None)


def cache_rng(rng: Any) -> None:
    _item.rng = rng
