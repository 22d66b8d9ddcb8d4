"""The runner's parts: the in-flight window, the reorder buffer, chunk sizing, the source reader.

Each is a small object with one job, used by `_runner.StageRunner`:

    source:  SourceReader.pull() --chunk--> fan-out (runner) --chunk--> [Channel]
    stage:   Window.acquire() -> Channel.get(Sizer.limit) -> worker -> Reorder.add()
             -> fan-out -> Window.release()

Chunk sizes are chosen by time, never by the user: a stage starts with chunks of one item (the
first result is prompt), doubles them while a chunk costs well under `CHUNK_S`, and shrinks
them at once for slow or large items. Imports `_transport` only.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

from ._transport import Cancelled, RunState, chunk_nbytes, wait

#: Largest chunk in items. Past a few thousand the per-chunk costs (a lock, a wake-up, a pipe
#: message) are noise; `Pool.imap` is tuned near 10,000 on small items.
MAX_CHUNK = 16384
#: Bytes of array data a chunk should stay under: items this large travel one per chunk so
#: that the byte bounds on channels and in-flight work keep their meaning.
CHUNK_BYTES = 2**20
#: A source pull faster than this per item is "cheap" (a range, a list, an array: about 0.03
#: us per item); only cheap sources get chunks of more than one item, so a source that waits
#: (on a socket, a queue, or the consumer itself) never holds an item back while it waits.
CHEAP_PULL_S = 5e-6
#: A source chunk should take at most this long to pull: the latency one chunk adds.
SOURCE_CHUNK_S = 0.001


class Window:
    """How many chunks (and bytes of array data) a stage has taken and not yet delivered.

    ``acquire`` waits while the window is full; the byte bound applies only beyond one chunk
    per worker, so a large item always gets through.
    """

    def __init__(self, state: RunState, chunks: int, max_bytes: int | None, workers: int) -> None:
        self.chunks = chunks
        self.max_bytes = max_bytes
        self.workers = workers
        self.held = 0
        self.held_bytes = 0
        self._state = state
        self._cond = threading.Condition()
        self._waiters = 0
        state.register(self._cond)

    def _full(self) -> bool:
        if self.held >= self.chunks:
            return True
        return (
            self.max_bytes is not None
            and self.held_bytes >= self.max_bytes
            and self.held >= self.workers
        )

    def acquire(self, block: bool) -> bool:
        """Reserve room for one chunk; False (only when not ``block``) if there is none."""
        with self._cond:
            while self._full():
                if not block:
                    return False
                if self._state.cancelled:
                    raise Cancelled
                self._waiters += 1
                try:
                    wait(self._cond)
                finally:
                    self._waiters -= 1
            self.held += 1
            return True

    def add_bytes(self, size: int) -> None:
        if size:
            with self._cond:
                self.held_bytes += size

    def release(self, size: int = 0) -> None:
        with self._cond:
            self.held -= 1
            self.held_bytes -= size
            if self._waiters:
                self._cond.notify()

    def resize(self, chunks: int) -> None:
        with self._cond:
            self.chunks = max(chunks, self.workers)
            if self._waiters:
                self._cond.notify_all()


class Reorder:
    """Restores input order: things finished out of order wait for their turn (by ``seq``)."""

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self._next = 0
        self._pending: dict[int, Any] = {}

    def add(self, seq: int, thing: Any) -> list[Any]:
        """What may leave now, in order (``thing`` and those it unblocks, or nothing)."""
        if not self.ordered:
            return [thing]
        if seq != self._next:
            self._pending[seq] = thing
            return []
        ready = [thing]
        self._next += 1
        while self._next in self._pending:
            ready.append(self._pending.pop(self._next))
            self._next += 1
        return ready


class Sizer:
    """Chunk sizes for one stage from how long its items take (and how large they are).

    Starts at one item; doubles while a chunk costs under ``target_s``; shrinks at once when
    items are slow (so every worker stays busy) or large (one array per chunk).
    """

    def __init__(self, target_s: float, fixed: int | None = None, cap: int = MAX_CHUNK) -> None:
        self.target_s = target_s
        self.cap = min(cap, MAX_CHUNK)
        self.size = fixed or 1
        self._fixed = fixed is not None
        self._per_item_s: float | None = None
        self._per_item_bytes = 0.0
        self._lock = threading.Lock()

    def limit(self) -> int:
        return self.size

    def learn(self, items: int, seconds: float, size: int = 0) -> None:
        if self._fixed or items <= 0:
            return
        with self._lock:
            per_item, per_bytes = seconds / items, size / items
            if self._per_item_s is None:
                self._per_item_s, self._per_item_bytes = per_item, per_bytes
            else:
                self._per_item_s = 0.7 * self._per_item_s + 0.3 * per_item
                self._per_item_bytes = 0.7 * self._per_item_bytes + 0.3 * per_bytes
            by_time = int(self.target_s / max(self._per_item_s, 1e-8))
            by_bytes = int(CHUNK_BYTES / max(self._per_item_bytes, 1.0))
            wanted = max(1, min(self.cap, by_time, by_bytes))
            self.size = min(wanted, 2 * self.size) if wanted > self.size else wanted


class SourceReader:
    """Reads a source's iterable in chunks, at C speed for cheap iterables (``islice``).

    A chunk grows (doubling) only while the iterable yields cheaply, chunk after chunk; one
    slow pull sets it back to one item, so a source that waits between items delivers each
    item as soon as it has it. ``count_bytes``: also keep chunks of arrays under
    `CHUNK_BYTES` (one item per chunk for large arrays).
    """

    def __init__(self, iterable: Any, count_bytes: bool) -> None:
        self.iterator: Iterator[Any] = iter(iterable)
        self._count_bytes = count_bytes
        self._size = 1
        self._cheap = 0  # cheap chunks in a row
        self.busy_s = 0.0

    def pull(self) -> tuple[list[Any], int, BaseException | None]:
        """The next chunk (empty at the end), its bytes of array data, and the exception the
        iterable raised after yielding the chunk's items (they are delivered first)."""
        values: list[Any] = []
        error: BaseException | None = None
        start = time.perf_counter()
        try:
            if self._size == 1:
                values.append(next(self.iterator))
            else:
                values.extend(itertools.islice(self.iterator, self._size))
        except StopIteration:
            pass
        except BaseException as exc:  # the items pulled before it are kept
            error = exc
        elapsed = time.perf_counter() - start
        self.busy_s += elapsed
        size = chunk_nbytes(values) if self._count_bytes and values else 0
        self._adapt(len(values), elapsed, size)
        return values, size, error

    def _adapt(self, items: int, elapsed: float, size: int) -> None:
        if items == 0:
            return
        per_item = elapsed / items
        if per_item > CHEAP_PULL_S or elapsed > SOURCE_CHUNK_S:
            self._cheap = 0
            self._size = 1
        else:
            self._cheap += 1
            if self._cheap >= 2:
                self._size = min(2 * self._size, MAX_CHUNK)
        if size:
            self._size = max(1, min(self._size, int(CHUNK_BYTES * items / size)))
