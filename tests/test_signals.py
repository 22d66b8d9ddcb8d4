"""A signal reaches the program while its main thread waits on a run.

CPython runs signal handlers in the main thread only, between bytecodes. A signal the kernel
hands to another thread, or one that lands just as the main thread goes to sleep on a lock
(while it waits for the GIL, say, behind a busy worker thread), is seen only when that lock is
next taken: for a reader of a run whose output never comes (an endless run into a sink, a
filter that keeps nothing), never. That was a Ctrl-C that hung ``headrace run`` once in a while.
Here the signal is sent to a helper thread on purpose (``pthread_kill``), so that the main
thread is never woken by it: the reader must look for it by itself, soon.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import headrace as hr
from headrace._transport import Daemon


class Interrupted(Exception):
    """What the test's signal handler raises in the main thread."""


@pytest.fixture
def signal_from_another_thread() -> Iterator[Callable[..., threading.Event]]:
    """``send(after_s)``: SIGUSR1, delivered to a helper thread ``after_s`` from now (to the
    main thread with ``to_main=True``); the main thread's handler raises `Interrupted`. The
    event it returns gives the run something to output 3 s later, so that without the fix the
    test fails instead of hanging."""
    previous = signal.getsignal(signal.SIGUSR1)

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    signal.signal(signal.SIGUSR1, handler)
    helpers: list[threading.Thread] = []
    give_up = threading.Event()

    def send(after_s: float, to_main: bool = False) -> threading.Event:
        late = threading.Event()
        main = threading.main_thread().ident

        def helper() -> None:
            time.sleep(after_s)
            signal.pthread_kill(main if to_main else threading.get_ident(), signal.SIGUSR1)
            if not give_up.wait(3.0):
                late.set()

        thread = threading.Thread(target=helper, name="test-signal-sender")
        helpers.append(thread)
        thread.start()
        return late

    try:
        yield send
    finally:
        give_up.set()
        for thread in helpers:
            thread.join(5)
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_reader_sees_a_signal_while_the_run_gives_nothing(
    signal_from_another_thread: Callable[[float], threading.Event], backend: str
) -> None:
    late = signal_from_another_thread(0.3)
    busy = hr.from_iterable(itertools.count()).map(abs, workers=2, backend=backend)
    stream = busy.filter(lambda x: late.is_set(), backend="inline")  # nothing, for 3 s
    start = time.monotonic()
    with pytest.raises(Interrupted):
        for _ in stream:
            pass
    took = time.monotonic() - start
    assert not late.is_set(), "the handler ran only when an item came"
    assert took < 0.3 + 1.5, f"the signal was handled {took - 0.3:.2f} s late"


def test_a_signal_reaches_a_reader_waiting_behind_another_reader(
    signal_from_another_thread: Callable[[float], threading.Event],
) -> None:
    """Two threads read one run: the main thread waits its turn behind the other reader, which
    waits for an item that does not come."""
    late = signal_from_another_thread(0.3)
    stream = hr.from_iterable(itertools.count()).filter(lambda x: late.is_set())
    run = hr.Run([(stream._node, stream._port)])

    def read() -> None:
        with contextlib.suppress(hr.ClosedError):  # the run is closed under it
            run.next_of(0)

    other = threading.Thread(target=read, name="test-reader", daemon=True)
    try:
        other.start()
        time.sleep(0.1)  # the other reader is waiting
        start = time.monotonic()
        with pytest.raises(Interrupted):
            run.next_of(0)
        took = time.monotonic() - start
    finally:
        run.close()
        other.join(5)
    assert not late.is_set(), "the handler ran only when an item came"
    assert took < 0.2 + 1.5, f"the signal was handled {took - 0.2:.2f} s late"


def test_readers_of_two_outlets_do_not_wait_for_each_other() -> None:
    """A reader waiting for one terminal stream does not hold up the reader of another."""
    release = threading.Event()
    xs = hr.from_iterable(range(1000))
    held = xs.filter(lambda x: release.wait(10) and x == 0, name="held")
    free = xs.map(abs, name="free")
    run = hr.Run([(held._node, held._port), (free._node, free._port)])
    got: list[int] = []
    other = threading.Thread(target=lambda: got.append(run.next_of(0)), name="test-reader")
    try:
        other.start()
        time.sleep(0.1)  # the other reader waits for `held`
        firsts = [run.next_of(1) for _ in range(10)]
    finally:
        release.set()
        other.join(10)
        run.close()
    assert firsts == list(range(10))
    assert got == [0]


@pytest.mark.parametrize("to_main", [False, True], ids=["to another thread", "to the main thread"])
@pytest.mark.parametrize("where", ["thread stage", "source"])
def test_a_close_interrupted_by_a_signal_is_finished_by_the_next_close(
    signal_from_another_thread: Callable[..., threading.Event], where: str, to_main: bool
) -> None:
    """A signal (Ctrl-C) during `close`, while a call in a thread stage (or the source's
    iterator) still runs, reaches the program at once (`close` waited in one piece, so one
    that the kernel handed to another thread was seen only after the 5 s it waits for calls);
    the next `close` then waits for that call, as the first would have, and leaves no thread
    of the run behind. On CPython 3.11 a signal that interrupts ``Thread.join`` marks the
    thread as ended while it still runs: the next close returned at once, the thread unseen."""
    release = threading.Event()
    started = threading.Barrier(3 if where == "thread stage" else 2, timeout=5)

    def slow(x: int) -> int:
        started.wait()
        release.wait(10)
        return x

    def numbers() -> Iterator[int]:
        yield 0
        started.wait()
        release.wait(10)
        yield 1

    if where == "thread stage":
        stream = hr.from_iterable(range(4)).map(slow, workers=2, backend="thread", name="slow")
    else:
        stream = hr.from_iterable(numbers()).map(abs, name="plain")
    run = stream.open()
    timer = threading.Timer(1.0, release.set)
    try:
        started.wait()  # the calls are running
        signal_from_another_thread(0.2, to_main)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            run.close()
        interrupted_after = time.monotonic() - start
        timer.start()
        start = time.monotonic()
        run.close()
        waited = time.monotonic() - start
    finally:
        release.set()
        timer.cancel()
    assert interrupted_after < 0.2 + 1.5, (
        f"the signal was seen {interrupted_after - 0.2:.2f} s late"
    )
    assert waited > 0.5, f"the second close returned after {waited:.2f} s, the calls still running"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("headrace-")]


def nap(x: np.ndarray) -> np.ndarray:
    """The first two items at once, the rest after 30 s (they never come)."""
    time.sleep(30 if x[0] >= 2 else 0)
    return x + 1


def test_a_close_interrupted_while_it_waits_for_a_process_stage_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C that lands while `close` waits for a process stage's supervisor threads kills
    the stage's workers at once, and the stage's clean-up (its shared-memory segments among
    it) is still done, by the last of those threads to end, with no second `close` (a
    notebook's interrupted cell, which nobody closes again); a second one returns at once. The
    Ctrl-C is simulated where it lands (the wait), so that the moment is certain."""
    real_wait_end = Daemon.wait_end
    hit: list[str] = []

    def wait_end(self: Daemon, timeout: float) -> bool:
        main = threading.current_thread() is threading.main_thread()
        if main and not hit and self.name.startswith("headrace-nap-"):
            hit.append(self.name)
            raise Interrupted
        return real_wait_end(self, timeout)

    def segments() -> set[str]:
        return {n for n in os.listdir("/dev/shm") if n.startswith(f"hr-{os.getpid()}-")}

    before = segments()
    items = (np.full(256 * 1024, i, dtype=np.float64) for i in range(6))  # 2 MiB each
    run = hr.from_iterable(items).map(nap, workers=2, backend="process", name="nap").open()
    assert run.next_of(0)[0] == 1  # the workers now hold items that take 30 s
    assert segments() - before, "the run made no segment: the test no longer tests their removal"
    monkeypatch.setattr(Daemon, "wait_end", wait_end)
    with pytest.raises(Interrupted):
        run.close()
    assert hit, "the close did not wait for the stage's threads"
    deadline = time.monotonic() + 3.0
    while segments() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not segments() - before, "an interrupted close left the stage's segments"
    start = time.monotonic()
    run.close()
    assert time.monotonic() - start < 1.0
    assert not [t.name for t in threading.enumerate() if t.name.startswith("headrace-nap")]
