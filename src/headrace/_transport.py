"""Channels: the bounded queues that join stages, and the run-wide cancel switch.

Owns: `Channel` (bounded, many producers, end-of-stream once every producer closed, a consumer
that can detach), `ZipChannel` (joins the items of several inputs by item index), `RunState`
(cancelling wakes every waiter), `Cancelled` and `END`. Items are ``(index, value)`` pairs.
Imports nothing from headrace but `_errors`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import numpy as np


class _End:
    def __repr__(self) -> str:
        return "END"


#: Returned by `Channel.get` once every producer has closed and the channel is empty.
END: Final = _End()


class Cancelled(Exception):
    """Raised inside headrace's own threads when the run is being cancelled."""


class StopStage(Exception):
    """Raised inside a stage when nobody reads its outputs any more (e.g. after a take)."""


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
            with condition:
                condition.notify_all()
        for callback in callbacks:
            callback()


class Channel:
    """A bounded FIFO of ``(index, value)`` items between stages.

    ``put`` blocks while the channel is full (backpressure) and returns False once the
    consumer has detached (the item is discarded); ``get`` blocks while it is empty and
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
        self._state = state
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._not_empty = threading.Condition(self._lock)
        state.register(self._not_full, self._not_empty)
        self._open = producers
        # Threads waiting in put / get: a notify with nobody waiting is skipped (it costs a
        # Python-level ownership check per item).
        self._putters = 0
        self._getters = 0
        self.detached = False
        self.discarded = 0
        self.peak_fill = 0
        self.blocked_s = 0.0
        self.starved_s = 0.0

    @property
    def fill(self) -> int:
        return len(self._items)

    def _full(self, size: int) -> bool:
        if len(self._items) >= self.capacity:
            return not self.detached
        if self._byte_bound is None or len(self._items) < self._min_items:
            return False
        return self._bytes + size > self._byte_bound and not self.detached

    def put(self, item: Any, producer: int = 0) -> bool:
        size = nbytes(item[1]) if self._byte_bound is not None else 0
        with self._not_full:
            self._await_room(size)
            if self.detached:
                self.discarded += 1
                return False
            self._bytes += size
            self._add(item, producer)
            if self._getters:
                self._not_empty.notify()
            return True

    def put_many(self, items: list[Any], producer: int = 0) -> int:
        """`put` for several items under one lock, waking the consumer once (and before any
        wait for room); how many were delivered (fewer once the consumer has detached)."""
        sizes = [nbytes(v) for _, v in items] if self._byte_bound is not None else None
        added = 0
        with self._not_full:
            try:
                for i, item in enumerate(items):
                    size = sizes[i] if sizes is not None else 0
                    if added and self._getters and self._full(size):
                        self._not_empty.notify()  # what is in can be read while we wait
                    self._await_room(size)
                    if self.detached:
                        self.discarded += len(items) - i
                        return i
                    self._bytes += size
                    self._add(item, producer)
                    added += 1
                return len(items)
            finally:
                if added and self._getters:
                    self._not_empty.notify()

    def _await_room(self, size: int) -> None:
        """Wait (holding the lock) until an item of ``size`` bytes fits; Cancelled if the run
        is cancelled meanwhile."""
        if self._full(size):
            start = time.perf_counter()
            while self._full(size):
                if self._state.cancelled:
                    raise Cancelled
                self._putters += 1
                try:
                    self._not_full.wait()
                finally:
                    self._putters -= 1
            self.blocked_s += time.perf_counter() - start
        if self._state.cancelled:
            raise Cancelled

    def _add(self, item: Any, producer: int) -> None:
        self._items.append(item)
        if len(self._items) > self.peak_fill:
            self.peak_fill = len(self._items)

    def get(self) -> Any:
        with self._not_empty:
            if not self._await_item():
                return END
            item = self._items.popleft()
            if self._byte_bound is not None:
                self._bytes -= nbytes(item[1])
            self._room_made()
            return item

    def get_many(self, n: int, block: bool = True) -> Any:
        """Up to ``n`` items under one lock: waits for the first only when ``block``; ``[]``
        when none is there (without blocking), `END` once the channel has ended."""
        with self._not_empty:
            if not block and not self._items and self._open:
                return []
            if not self._await_item():
                return END
            take = min(n, len(self._items))
            items = [self._items.popleft() for _ in range(take)]
            if self._byte_bound is not None:
                self._bytes -= sum(nbytes(v) for _, v in items)
            self._room_made()
            return items

    def _await_item(self) -> bool:
        """Wait (holding the lock) for an item: True when one is there, False at the end;
        Cancelled if the run is cancelled meanwhile."""
        if not self._items and self._open:
            start = time.perf_counter()
            while not self._items and self._open:
                if self._state.cancelled:
                    raise Cancelled
                self._getters += 1
                try:
                    self._not_empty.wait()
                finally:
                    self._getters -= 1
            self.starved_s += time.perf_counter() - start
        if self._state.cancelled:
            raise Cancelled
        return bool(self._items)

    def _room_made(self) -> None:
        # All: a woken producer may not use the room (a zip half-tuple, a large item under
        # the byte bound), and the one that could must not sleep on.
        if self._putters:
            self._not_full.notify_all()

    def close(self, producer: int = 0) -> None:
        """One producer has finished."""
        with self._lock:
            self._open -= 1
            self._not_empty.notify_all()

    def detach(self) -> int:
        """The consumer stops reading: drop what is queued and every later put.

        Returns how many queued items were dropped."""
        with self._lock:
            dropped = len(self._items)
            self.discarded += dropped
            self._items.clear()
            self._bytes = 0
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
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, memoryview)):  # a tuple: faster than a union
        return len(value)
    if isinstance(value, (tuple, list)):
        return sum(v.nbytes for v in value if isinstance(v, np.ndarray))
    if isinstance(value, dict):
        return sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))
    return 0


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
        self._partial: dict[Any, list[Any]] = {}
        self._missing: dict[Any, int] = {}

    def _add(self, item: Any, producer: int) -> None:
        key, value = item
        parts = self._partial.get(key)
        if parts is None:
            parts = self._partial[key] = [None] * self._width
            self._missing[key] = self._width
        parts[producer] = value
        self._missing[key] -= 1
        if self._missing[key] == 0:
            del self._partial[key], self._missing[key]
            super()._add((key, tuple(parts)), producer)

    def put(self, item: Any, producer: int = 0) -> bool:
        if item[0] in self._partial:  # completing a tuple never needs room
            with self._lock:
                if self._state.cancelled:
                    raise Cancelled
                if self.detached:
                    self.discarded += 1
                    return False
                self._add(item, producer)
                if self._getters:
                    self._not_empty.notify()
                return True
        return super().put(item, producer)

    def put_many(self, items: list[Any], producer: int = 0) -> int:
        # One at a time: each item may complete a tuple (which needs no room) or not.
        for done, item in enumerate(items):
            if not self.put(item, producer):
                return done
        return len(items)
