"""Channels: the bounded queues that join stages, and the run-wide cancel switch.

Owns: `Channel` (bounded, many producers, end-of-stream once every producer closed, a consumer
that can detach), `ZipChannel` (joins the items of several inputs by item index), `RunState`
(cancelling wakes every waiter), `Cancelled`, `StopStage`, `END`, `nbytes`, `wait`, the
wait that leaves the main thread free to take a signal (Ctrl-C), and `Daemon`, the thread that
the main thread can wait for as safely.

The unit of transfer is a chunk: a pair ``(keys, values)`` of equal length, where ``keys``
are the items' indices (a `range` when they are consecutive) and ``values`` a list. A put or
a get moves a whole chunk under one lock, with one wake-up. The capacity counts items: a
channel accepts a chunk while it holds fewer items than its capacity (and fewer bytes of array
data than its byte bound), so it holds at most one chunk beyond its capacity.
Imports only `_types` from headrace (and never NumPy: see `loaded_numpy`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from ._types import Collated, loaded_numpy


class _End:
    def __repr__(self) -> str:
        return "END"


#: Returned by `Channel.get` once every producer has closed and the channel is empty.
END: Final = _End()

#: Seconds `RunState.cancel` tries for each lock it wakes waiters under before it goes on.
CANCEL_LOCK_S = 0.05

#: The longest the main thread sleeps on a lock before it looks for a signal again (`wait`).
SIGNAL_CHECK_S = 0.1

#: A chunk: the items' indices and their values.
Chunk = tuple[Sequence[int], list[Any]]


class Cancelled(Exception):
    """Raised inside headrace's own threads when the run is being cancelled."""


class StopStage(Exception):
    """Raised inside a stage when nobody reads its outputs any more (e.g. after a take)."""


def wait(condition: threading.Condition) -> None:
    """``condition.wait()`` (the caller looks again, on any wake-up); in the main thread it
    wakes at least every `SIGNAL_CHECK_S`. CPython runs a signal's handler in the main thread,
    between bytecodes: a Ctrl-C that reaches the program as its main thread goes to sleep on a
    lock (one that lands while the thread waits for the GIL behind a busy worker, or that the
    kernel hands to another thread) is seen only when the thread next wakes. A reader of an
    endless run that outputs nothing would never wake; with this it wakes, and raises
    KeyboardInterrupt, within `SIGNAL_CHECK_S`."""
    if threading.current_thread() is threading.main_thread():
        condition.wait(SIGNAL_CHECK_S)
    else:
        condition.wait()


class Daemon(threading.Thread):
    """A daemon thread of headrace's that the main thread waits for with `wait_end`, not with
    ``Thread.join(timeout)``: on CPython 3.11, an exception from a signal handler (Ctrl-C) that
    interrupts such a join marks the joined thread as ended while it still runs (the clean-up
    of bpo-45274 releases the lock the running thread holds), so that `is_alive` says False and
    a later join returns at once. `wait_end` waits on an event the thread sets when its target
    returns, and joins it only then."""

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...], name: str) -> None:
        super().__init__(target=target, args=args, name=name, daemon=True)
        self.done = threading.Event()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.done.set()

    def wait_end(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread's target to return, then for the thread to
        exit; True if it has (never when called from the thread itself). In the main thread,
        in steps of `SIGNAL_CHECK_S`, as `wait` does."""
        if self is threading.current_thread():
            return False
        deadline = time.monotonic() + timeout
        step = SIGNAL_CHECK_S if threading.current_thread() is threading.main_thread() else None
        while not self.done.wait(max(0.0, min(deadline - time.monotonic(), step or timeout))):
            if time.monotonic() >= deadline:
                return not self.is_alive()
        self.join(1.0)  # only its exit is left (a thread-local's finaliser, at most)
        return not self.is_alive()


class RunState:
    """The cancel switch of one run: cancelling wakes every registered wait at once."""

    def __init__(self) -> None:
        self.cancelled = False
        self._lock = threading.Lock()
        self._conditions: list[threading.Condition] = []
        self._callbacks: list[Callable[[], None]] = []

    def register(self, *conditions: threading.Condition) -> None:
        with self._lock:
            self._conditions.extend(conditions)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (quick, non-blocking) when the run is cancelled, or now if it is."""
        with self._lock:
            if not self.cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            conditions = list(self._conditions)
            callbacks, self._callbacks = self._callbacks, []
        for condition in conditions:
            # Never wait for a lock here: a second Ctrl-C that lands inside a `with condition`
            # of this very thread can leave it held for good, and cancel must still return.
            if condition.acquire(timeout=CANCEL_LOCK_S):
                try:
                    condition.notify_all()
                finally:
                    condition.release()
        for callback in callbacks:
            callback()


class Channel:
    """A bounded FIFO of chunks between stages.

    ``put`` blocks while the channel is full (backpressure) and returns False once the
    consumer has detached (the chunk is discarded); ``get`` blocks while it is empty and
    returns `END` after every producer has closed. Both raise `Cancelled` when the run is
    cancelled. Seconds spent waiting are kept in ``blocked_s`` (producers) and ``starved_s``
    (the consumer).
    """

    def __init__(
        self,
        capacity: int,
        state: RunState,
        *,
        producers: int = 1,
        byte_bound: int | None = None,
        min_items: int = 2,
    ) -> None:
        self.capacity = capacity
        self._byte_bound = byte_bound
        self._min_items = min_items
        self._bytes = 0
        self._count = 0
        self._state = state
        self._chunks: deque[tuple[Sequence[int], list[Any], int]] = deque()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._not_empty = threading.Condition(self._lock)
        state.register(self._not_full, self._not_empty)
        self._open = producers
        # Threads waiting in put / get: a notify with nobody waiting is skipped.
        self._putters = 0
        self.getters = 0
        self.detached = False
        self.discarded = 0  # items dropped: put after the consumer detached, or queued then
        self.refused = 0  # items whose put was cancelled (or interrupted) before they went in
        self.peak_fill = 0
        self.blocked_s = 0.0
        self.starved_s = 0.0

    @property
    def fill(self) -> int:
        return self._count

    @property
    def counts_bytes(self) -> bool:
        return self._byte_bound is not None

    def _full(self, size: int) -> bool:
        if self.detached:
            return False
        if self._count >= self.capacity:
            return True
        if self._byte_bound is None or self._count < self._min_items:
            return False
        return self._bytes + size > self._byte_bound

    def put(self, keys: Sequence[int], values: list[Any], producer: int = 0, size: int = 0) -> bool:
        """Add a chunk (``size``: its bytes of array data, when the channel counts bytes);
        False if the consumer has detached and the chunk was discarded."""
        with self._not_full:
            try:
                self._await_room(size)
            except BaseException:
                self.refused += len(values)
                raise
            if self.detached:
                self.discarded += len(values)
                return False
            self._add(keys, values, size, producer)
            if self.getters:
                self._not_empty.notify()
            return True

    def _await_room(self, size: int) -> None:
        """Wait (holding the lock) until a chunk of ``size`` bytes fits; Cancelled if the run
        is cancelled meanwhile."""
        if self._full(size):
            start = time.perf_counter()
            while self._full(size):
                if self._state.cancelled:
                    raise Cancelled
                self._putters += 1
                try:
                    wait(self._not_full)
                finally:
                    self._putters -= 1
            self.blocked_s += time.perf_counter() - start
        if self._state.cancelled:
            raise Cancelled

    def _add(self, keys: Sequence[int], values: list[Any], size: int, producer: int) -> None:
        self._chunks.append((keys, values, size))
        self._count += len(values)
        self._bytes += size
        if self._count > self.peak_fill:
            self.peak_fill = self._count

    def get(self, limit: int = 0, block: bool = True) -> Any:
        """The next chunk, at most ``limit`` items (0: as queued; a longer chunk is split, and
        short ones queued behind each other are joined up to ``limit``). Waits for one only
        when ``block``, else returns None when there is none now; `END` once ended."""
        got = self.get_sized(limit, block)
        return got if got is None or got is END else (got[0], got[1])

    def get_sized(self, limit: int = 0, block: bool = True) -> Any:
        """`get`, with the chunk's bytes of array data (`chunk_nbytes`) as a third element,
        as its producers counted them: the consumer need not count them again. -1 where this
        channel does not count bytes. A chunk split here has its head counted again (when it
        holds any array data) and its rest's bytes are the difference."""
        with self._not_empty:
            if not self._chunks:
                if not block and self._open:
                    return None
                if not self._await_item():
                    return END
            elif self._state.cancelled:
                raise Cancelled
            keys, values, size = self._chunks.popleft()
            n = len(values)
            counted = self._byte_bound is not None
            if limit and n > limit:
                head_keys, head_values = keys[:limit], values[:limit]
                # Counted bytes stay exact: the head's are counted again, the rest's follow.
                head_size = chunk_nbytes(head_values) if counted and size else size * limit // n
                self._chunks.appendleft((keys[limit:], values[limit:], size - head_size))
                keys, values, size = head_keys, head_values, head_size
                n = limit
            elif limit and n < limit and self._chunks:
                keys, values, size = self._join(keys, values, size, limit)
                n = len(values)
            self._count -= n
            self._bytes -= size
            if self._putters:
                # All: a woken producer may not use the room (a large chunk under the byte
                # bound), and the one that could must not sleep on.
                self._not_full.notify_all()
            return keys, values, size if counted else -1

    def _join(
        self, keys: Sequence[int], values: list[Any], size: int, limit: int
    ) -> tuple[Sequence[int], list[Any], int]:
        """Join the chunks queued behind the first one, up to ``limit`` items."""
        keys, values = list(keys), list(values)
        while self._chunks and len(values) + len(self._chunks[0][1]) <= limit:
            more_keys, more_values, more_size = self._chunks.popleft()
            keys.extend(more_keys)
            values.extend(more_values)
            size += more_size
        return keys, values, size

    def _await_item(self) -> bool:
        """Wait (holding the lock) for a chunk: True when one is there, False at the end;
        Cancelled if the run is cancelled meanwhile."""
        if not self._chunks and self._open:
            start = time.perf_counter()
            while not self._chunks and self._open:
                if self._state.cancelled:
                    raise Cancelled
                self.getters += 1
                try:
                    wait(self._not_empty)
                finally:
                    self.getters -= 1
            self.starved_s += time.perf_counter() - start
        if self._state.cancelled:
            raise Cancelled
        return bool(self._chunks)

    def close(self, producer: int = 0) -> None:
        """One producer has finished."""
        with self._lock:
            self._open -= 1
            self._not_empty.notify_all()

    def detach(self) -> int:
        """The consumer stops reading: drop what is queued and every later put.

        Returns how many queued items were dropped."""
        with self._lock:
            dropped = self._count
            self.discarded += dropped
            self._chunks.clear()
            self._count = self._bytes = 0
            self.detached = True
            self._not_full.notify_all()
            return dropped


#: Types that never hold array data: the common small items, answered without a search.
_PLAIN = frozenset({int, float, str, bool, complex, type(None)})


def nbytes(value: Any) -> int:
    """Bytes of array data in an item: arrays and buffers, also one level inside a tuple,
    list or dict (the shapes of ML samples); other objects count as 0."""
    if type(value) in _PLAIN:
        return 0
    if isinstance(value, (bytes, bytearray, memoryview)):  # a tuple: faster than a union
        return len(value)
    if type(value) is Collated:
        return value.nbytes
    np = loaded_numpy()
    if np is None:
        return 0
    ndarray = np.ndarray
    if isinstance(value, ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(v.nbytes for v in value if isinstance(v, ndarray))
    if isinstance(value, dict):
        return sum(v.nbytes for v in value.values() if isinstance(v, ndarray))
    return 0


def chunk_nbytes(values: list[Any]) -> int:
    """`nbytes` of a whole chunk; a chunk of plain items is answered at C speed."""
    if _PLAIN.issuperset(map(type, values)):
        return 0
    return sum(map(nbytes, values))


class ZipChannel(Channel):
    """Joins the items of ``producers`` inputs that carry the same index into one tuple.

    Only complete tuples count towards the capacity: an input that runs ahead is held back by
    the bounded channels upstream of the zip, whose inputs all branch from one stream.
    """

    def __init__(self, capacity: int, state: RunState, *, producers: int, **bounds: Any) -> None:
        # Items only (``bounds`` dropped): a part would count bytes when put and a whole tuple
        # when taken; the parts are held by the bounded channels upstream anyway.
        super().__init__(capacity, state, producers=producers)
        self._width = producers
        self._partial: dict[int, list[Any]] = {}
        self._missing: dict[int, int] = {}

    def put(self, keys: Sequence[int], values: list[Any], producer: int = 0, size: int = 0) -> bool:
        with self._not_full:
            # Completing a tuple never needs room; starting one does.
            if any(k not in self._partial for k in keys):
                self._await_room(0)
            elif self._state.cancelled:
                raise Cancelled
            if self.detached:
                self.discarded += len(values)
                return False
            self._add(keys, values, 0, producer)
            if self.getters:
                self._not_empty.notify()
            return True

    def _add(self, keys: Sequence[int], values: list[Any], size: int, producer: int) -> None:
        done_keys: list[int] = []
        done_values: list[Any] = []
        for key, value in zip(keys, values, strict=True):
            parts = self._partial.get(key)
            if parts is None:
                parts = self._partial[key] = [None] * self._width
                self._missing[key] = self._width
            parts[producer] = value
            self._missing[key] -= 1
            if self._missing[key] == 0:
                del self._partial[key], self._missing[key]
                done_keys.append(key)
                done_values.append(tuple(parts))
        if done_values:
            super()._add(done_keys, done_values, 0, producer)
