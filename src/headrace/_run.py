"""Runs: one execution of a graph, iterated by the consumer, and the run options.

Owns: `Run` (start, iterate chunk by chunk, report, close), `parse_bytes` and the checks of the
run options. Builds on the runner and the monitor; `_streams` builds on it.
"""

from __future__ import annotations

import operator
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from . import _graph
from ._backends._process import START_METHODS
from ._errors import HeadraceError
from ._graph import Node, Plan, compile_plan
from ._monitor import Progress, Report
from ._runner import CLOSE_TIMEOUT, ERROR_GRACE, Execution
from ._shm import SHM_DIR
from ._stages import user_stacklevel
from ._transport import END, wait


def _dot(plan: Plan, report: Report | None) -> str:
    """DOT text of ``plan``, annotated with the figures and bottleneck of ``report``."""
    if report is None:
        return _graph.to_dot(plan)
    figures = {s.name: s.to_dict() for s in report.stages}
    return _graph.to_dot(plan, figures, report.bottleneck)


class Run:
    """One run of one or more streams: an iterator over the first stream's items.

    Closing (the end of the items, ``close()``, leaving a ``with`` block) stops every worker.

    Several threads may read one run at once (``next(run)``, or each its own ``for`` loop over
    it): each item goes to exactly one of them, every one of them sees the end of the stream
    (``StopIteration``), and the run's error reaches each of them. `chunks` is for one reader.
    Once a stream has ended, reading it again raises ``StopIteration`` again; reading a run
    closed before its end raises `ClosedError`.
    """

    def __init__(
        self,
        terminals: Sequence[tuple[Node, int]],
        *,
        progress: bool = False,
        seed: int | None = None,
        engine: Any = None,
        memory: int | str | None = None,
        start_method: str | None = None,
    ) -> None:
        _check_run_options(seed, engine, memory, start_method)
        self.plan = compile_plan(terminals)
        sources = {node: _source(node) for node in self.plan.nodes if node.kind == "source"}
        self._execution = Execution(
            self.plan,
            terminals,
            sources=sources,
            seed=seed,
            start_method=start_method,
            memory=None if memory is None else parse_bytes(memory),
            engine=engine,
        )
        self._cursors: list[Iterator[Any]] = [iter(())] * len(self._execution.outlets)
        self._ended = [False] * len(self._execution.outlets)
        # Fetching an outlet's next chunk: one reader of it at a time (the others wait, then
        # read the chunk it fetched), so that concurrent readers never drop a chunk. A flag
        # per outlet under one condition, not a lock held while fetching: a reader waiting its
        # turn in the main thread must see Ctrl-C (`wait`), and one interrupted just after it
        # got its turn must not keep it.
        self._turns = threading.Condition(threading.Lock())
        self._fetching = [False] * len(self._execution.outlets)
        self._progress: Progress | None = None
        if progress:
            self._progress = Progress(self._execution.snapshot, file=sys.stderr)
        try:
            self._execution.start()
        except BaseException:
            self._execution.close()  # the stages started so far
            raise
        if self._progress is not None:
            self._progress.start()

    def __iter__(self) -> Iterator[Any]:
        return self._items(0)

    def __next__(self) -> Any:
        return self.next_of(0)

    def _items(self, outlet: int) -> Iterator[Any]:
        """The items of one outlet: a generator over its chunks (the fast way to iterate)."""
        while True:
            yield from self._cursors[outlet]
            if not self._advance(outlet):
                return

    def _advance(self, outlet: int) -> bool:
        """Fetch the outlet's next chunk into its cursor; False at the end. A reader that
        finds the cursor refilled by another reader meanwhile fetches nothing."""
        mine = False
        try:
            with self._turns:
                while self._fetching[outlet]:
                    wait(self._turns)  # in the main thread, a Ctrl-C is seen while it waits
                self._fetching[outlet] = mine = True  # no signal can land between the two
            if operator.length_hint(self._cursors[outlet]):
                return True
            if self._ended[outlet]:
                return False
            try:
                values = self._execution.get(outlet)
            except BaseException:
                self.close(ERROR_GRACE)  # the error must not wait for a worker in user code
                raise
            if values is END:
                self._ended[outlet] = True
                if outlet == len(self._execution.outlets) - 1:
                    self.close()
                return False
            self._cursors[outlet] = iter(values)
            return True
        finally:
            if mine:
                with self._turns:
                    self._fetching[outlet] = False
                    self._turns.notify_all()

    def next_of(self, outlet: int) -> Any:
        """The next item of the terminal stream at position ``outlet`` (in the order the
        streams were given); `StopIteration` once that stream has ended."""
        while True:
            for item in self._cursors[outlet]:
                return item
            if not self._advance(outlet):
                raise StopIteration

    def chunks(self, outlet: int = 0) -> Iterator[list[Any]]:
        """The items of one outlet, a list per chunk as they arrive."""
        rest = list(self._cursors[outlet])
        if rest:
            yield rest
        while True:
            try:
                values = self._execution.get(outlet)
            except BaseException:
                self.close(ERROR_GRACE)
                raise
            if values is END:
                if outlet == len(self._execution.outlets) - 1:
                    self.close()
                return
            yield values

    def drain(self) -> None:
        """Read every terminal stream to its end, discarding the items (what `Stream.run`
        and `run` do)."""
        for outlet in range(len(self._execution.outlets)):
            for _ in self.chunks(outlet):
                pass

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop every stage and wait (up to ``timeout`` s) for its workers."""
        self._execution.close(timeout)
        if self._progress is not None:
            self._progress.stop()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        execution = getattr(self, "_execution", None)
        if execution is not None and not execution.closed:
            execution.state.cancel()  # no joins here: GC may run in any thread

    def report(self) -> Report:
        """The figures of this run so far (final once the run has ended)."""
        wall, stages = self._execution.snapshot()
        plan = self.plan
        return Report(
            wall,
            stages,
            list(self._execution.errors),
            dot=lambda report: _dot(plan, report),
        )


_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_bytes(value: int | str) -> int:
    """A byte count from an int or a string such as ``"512MB"`` or ``"2GiB"``.

    Examples
    --------
    >>> parse_bytes("2GB"), parse_bytes("1.5KiB"), parse_bytes(10)
    (2000000000, 1536, 10)
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _BYTES.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"memory must be a positive byte count such as '2GB', got {value!r}")
    base = 1024 if (match.group(3) or "").upper() == "IB" else 1000
    return int(float(match.group(1)) * base ** "_KMGT".index(match.group(2).upper() or "_"))


def _is_ray_engine(engine: Any) -> bool:
    # Imported here: a local run needs none of the Ray backend (its import costs a few ms of
    # the CPU that the forkserver, booting meanwhile, could use).
    from ._backends._ray import RayEngine

    return isinstance(engine, RayEngine)


def _check_run_options(seed: Any, engine: Any, memory: Any, start_method: Any = None) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    if engine is not None and not _is_ray_engine(engine):
        raise ValueError(
            f"engine must be None (the local engine) or a headrace.RayEngine, got {engine!r}"
        )
    if memory is not None:
        _check_memory(memory, parse_bytes(memory))
    if start_method is not None and start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")


#: A budget below this sends most arrays through the pipe instead of shared memory (each
#: sending process gets a share of it, and one slot holds one array): warned about.
MIN_USEFUL_MEMORY = 64 * 2**20


def _check_memory(memory: Any, budget: int) -> None:
    """Refuse a budget this machine cannot honour; warn when one is too small to be useful."""
    try:
        st = os.statvfs(SHM_DIR)
        shm_total = st.f_blocks * st.f_frsize
    except OSError:
        shm_total = 0  # no /dev/shm: the budget has nothing to compare with
    if shm_total and budget > shm_total:
        raise ValueError(
            f"memory={memory!r} is {budget:,} bytes, more than {SHM_DIR} holds on this machine "
            f"({shm_total:,} bytes): it caps the shared memory that process stages use for "
            "arrays, so it cannot be honoured. Give less, or leave memory=None for a budget "
            "sized from /dev/shm"
        )
    if budget < MIN_USEFUL_MEMORY:
        warnings.warn(
            f"headrace: memory={memory!r} is so small that most arrays will go through the "
            "pipe instead of shared memory (several times slower). Give at least "
            f"{MIN_USEFUL_MEMORY // 2**20}MiB, or leave memory=None",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )


def _source(node: Node) -> Callable[[], Iterable[Any]]:
    iterable = node.args["iterable"]
    if node.args["one_shot"]:
        if node.args.get("used"):
            raise HeadraceError(
                "this stream reads a one-shot iterator that an earlier run already consumed; "
                "pass a list, a range or another re-iterable object to run it more than once"
            )
        node.args["used"] = True
    return lambda: iterable
