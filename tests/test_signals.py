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
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import headrace as hr


class Interrupted(Exception):
    """What the test's signal handler raises in the main thread."""


@pytest.fixture
def signal_from_another_thread() -> Iterator[Callable[[float], threading.Event]]:
    """``send(after_s)``: SIGUSR1, delivered to a helper thread ``after_s`` from now; the main
    thread's handler raises `Interrupted`. The event it returns gives the run something to
    output 3 s later, so that without the fix the test fails instead of hanging."""
    previous = signal.getsignal(signal.SIGUSR1)

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    signal.signal(signal.SIGUSR1, handler)
    helpers: list[threading.Thread] = []
    give_up = threading.Event()

    def send(after_s: float) -> threading.Event:
        late = threading.Event()

        def helper() -> None:
            time.sleep(after_s)
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
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
