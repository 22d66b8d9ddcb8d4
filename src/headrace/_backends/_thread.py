"""The thread backend: a pool of daemon threads per stage.

Each thread runs the shared worker body. With a ``timeout``, a watchdog thread checks the
item each worker holds: an item past its deadline is reported at once (or, within its
``retries``, run again) and its worker is replaced by a fresh thread. Python cannot kill a
thread, so the given-up call runs on until it returns; its late result is discarded and the
thread then ends. Closing the run does not wait for such a thread (nobody wants what its call
returns; it is a daemon): only for the calls whose results are still wanted.
"""

from __future__ import annotations

import itertools
import threading
import time

from .._stages import STREAM_KINDS
from .._transport import Cancelled, Daemon, StopStage
from ._base import (
    Backend,
    Chunk,
    Failure,
    StageWork,
    Workers,
    failed,
    run_calls,
    run_stream,
    timeout_error,
)


class ThreadBackend(Backend):
    name = "thread"

    def start(self, work: StageWork) -> Workers:
        return ThreadWorkers(work)


class ThreadWorkers(Workers):
    def __init__(self, work: StageWork) -> None:
        self._work = work
        self._ids = itertools.count()
        self._threads: dict[int, Daemon] = {}  # worker id -> its thread
        self._abandoned: set[int] = set()  # workers whose call timed out: not waited for
        self._lock = threading.Lock()
        self._holding: dict[int, tuple[Chunk, float]] = {}  # worker id -> chunk, deadline
        self._stop = threading.Event()
        self._wake = threading.Event()  # a worker took a task while the watchdog slept idle
        self._tries: dict[int, int] = {}  # item index -> times it timed out
        self._watchdog: Daemon | None = None
        self._timed = work.options.timeout is not None and work.kind not in STREAM_KINDS
        for _ in range(work.options.workers):
            self._spawn()
        if self._timed:
            self._watchdog = Daemon(self._watch, (), f"headrace-{work.name}-watchdog")
            self._watchdog.start()

    def _spawn(self, first: Chunk | None = None) -> None:
        wid = next(self._ids)
        thread = Daemon(self._run, (wid, first), f"headrace-{self._work.name}-{wid}")
        with self._lock:
            self._threads[wid] = thread
        thread.start()

    def _run(self, wid: int, first: Chunk | None = None) -> None:
        try:
            if self._work.kind in STREAM_KINDS:
                run_stream(self._work)
            elif self._timed:
                run_calls(self._work, lambda chunk: self._hold(wid, chunk), first=first)
            else:
                run_calls(self._work)
        except (Cancelled, StopStage):
            pass  # the run is being cancelled, or nobody reads this stage any more
        finally:
            self._work.worker_exited()

    def _hold(self, wid: int, chunk: Chunk | None) -> bool:
        """Note the chunk (of one item: the stage is timed) a worker starts; on finishing,
        False if the watchdog gave up on it."""
        with self._lock:
            if chunk is not None:
                assert self._work.options.timeout is not None
                if not self._holding:
                    self._wake.set()
                self._holding[wid] = (chunk, time.monotonic() + self._work.options.timeout)
                return True
            return self._holding.pop(wid, None) is not None

    def _watch(self) -> None:
        timeout = self._work.options.timeout
        assert timeout is not None
        while not self._stop.is_set():
            now = time.monotonic()
            late: list[Chunk] = []
            with self._lock:
                for wid, (task, deadline) in list(self._holding.items()):
                    if deadline <= now:
                        del self._holding[wid]
                        self._abandoned.add(wid)
                        late.append(task)
                idle = not self._holding
                wait = min((d for _, d in self._holding.values()), default=now + timeout) - now
            for chunk in late:
                key = chunk.keys[0]
                tries = self._tries[key] = self._tries.get(key, 0) + 1
                if tries <= self._work.options.retries:
                    self._spawn(first=chunk)  # the item goes again, on a fresh thread
                    continue
                self._spawn()  # the late worker exits when its call returns
                error = timeout_error(self._work.name, key, timeout)
                try:
                    self._work.finish(failed(chunk, Failure(key, error, ""), self._work.ports))
                except (Cancelled, StopStage):
                    return  # the timeout failed the run, or nobody reads the stage
            if idle:
                self._wake.wait(wait)
                self._wake.clear()
            else:
                self._stop.wait(max(wait, 0.001))

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._watchdog is not None:
            self._watchdog.wait_end(deadline - time.monotonic())
        with self._lock:  # a thread whose call timed out ends when that call returns
            threads = [t for wid, t in self._threads.items() if wid not in self._abandoned]
        for thread in threads:
            thread.wait_end(deadline - time.monotonic())  # not from that thread itself
        return not any(t.is_alive() for t in threads)
