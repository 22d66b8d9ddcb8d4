"""Idle worker processes kept warm for the next run of the program."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import threading
import time
from typing import TYPE_CHECKING, Any

from ._protocol import IDLE_MARGIN_S, IDLE_S, MAX_WARM, STOP_GRACE_S

if TYPE_CHECKING:
    from ._supervisor import Proc


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
