"""hr.ZMQStreamer: a Streamer in a background process, items over ZeroMQ (needs pyzmq)."""

from __future__ import annotations

import itertools
import os
import signal
import stat
import tempfile

import numpy as np
import pytest

import headrace as hr

zmq = pytest.importorskip("zmq")


def batches(n, rows=2):
    for i in range(n):
        yield {"X": np.full((rows, 3), i, dtype=np.float32), "i": i}


def only_x(n):
    for i in range(n):
        yield {"X": np.full((1, 3), i)}


def endless():
    for i in itertools.count():
        yield {"X": np.full(4, i)}


def fails_at(n):
    for i in range(n):
        yield {"i": i}
    raise KeyError(f"no item {n}")


def dies_at(n, how):
    for i in range(n):
        yield {"i": i}
    if how == "exit":
        os._exit(7)
    os.kill(os.getpid(), signal.SIGKILL)


def test_items_arrive_in_order() -> None:
    got = list(hr.ZMQStreamer(hr.Streamer(batches, 20)))
    assert [b["i"] for b in got] == list(range(20))
    assert got[3]["X"].dtype == np.float32 and got[3]["X"].shape == (2, 3)
    assert (got[3]["X"] == 3).all()


def test_max_items_and_cycle_run_in_the_background() -> None:
    z = hr.ZMQStreamer(hr.Streamer(batches, 3))
    assert [b["i"] for b in z(max_items=2)] == [0, 1]
    assert [b["i"] for b in z.cycle(max_items=7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [b["i"] for b in z(max_items=5, cycle=True)] == [0, 1, 2, 0, 1]


def test_a_lambda_and_a_pipeline_can_run_in_the_background() -> None:
    z = hr.ZMQStreamer(hr.Streamer(lambda: iter(range(5))))
    assert list(z) == [0, 1, 2, 3, 4]
    stream = hr.from_iterable(range(6)).map(lambda x: x * x, workers=2)
    assert list(hr.ZMQStreamer(stream)) == [0, 1, 4, 9, 16, 25]


def test_a_seeded_mux_reproduces_and_each_pass_differs() -> None:
    def mux():
        pool = [hr.Streamer(itertools.repeat, c) for c in "abcd"]
        return hr.StochasticMux(pool, 2, 5, random_state=42)

    a, b = hr.ZMQStreamer(mux()), hr.ZMQStreamer(mux())
    first_a, first_b = list(a(max_items=200)), list(b(max_items=200))
    assert first_a == first_b
    assert list(a(max_items=200)) == list(b(max_items=200)) != first_a


def test_buffering_in_the_background() -> None:
    z = hr.ZMQStreamer(hr.Streamer(only_x, 20).rebatch(8))
    assert [b["X"].shape[0] for b in z] == [8, 8, 4]


def test_copy_gives_writable_arrays() -> None:
    item = next(iter(hr.ZMQStreamer(hr.Streamer(batches, 1), copy=True)))
    item["X"] += 1
    assert (item["X"] == 1).all()


def test_tcp_transport_on_loopback() -> None:
    assert [b["i"] for b in hr.ZMQStreamer(hr.Streamer(batches, 4), transport="tcp")] == [
        0,
        1,
        2,
        3,
    ]


def test_the_ipc_directory_is_private_and_removed() -> None:
    def socket_dirs():
        tmp = tempfile.gettempdir()
        mine = f"headrace-{os.getpid()}-zmq-"  # the owner's pid in the name: see _tempdirs
        return [os.path.join(tmp, d) for d in os.listdir(tmp) if d.startswith(mine)]

    it = iter(hr.ZMQStreamer(hr.Streamer(endless)))
    try:
        next(it)
        (where,) = socket_dirs()
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o700
    finally:
        it.close()
    assert socket_dirs() == []


def test_a_user_error_keeps_its_type_and_traceback() -> None:
    got = []
    with pytest.raises(KeyError, match="no item 3") as info:
        for b in hr.ZMQStreamer(hr.Streamer(fails_at, 3)):
            got.append(b["i"])
    assert got == [0, 1, 2]  # the items before the error arrive first
    assert "Traceback in the worker" in str(info.value.__cause__)
    assert "fails_at" in str(info.value.__cause__)
    assert any("ZMQStreamer" in note for note in info.value.__notes__)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_dead_background_process_is_an_error_not_a_hang(how: str) -> None:
    with pytest.raises(hr.WorkerCrashedError, match="died") as info:
        list(hr.ZMQStreamer(hr.Streamer(dies_at, 3, how)))
    assert info.value.exitcode == (7 if how == "exit" else -signal.SIGKILL)


def test_an_item_that_needs_pickle() -> None:
    with pytest.raises(TypeError, match="allow_pickle=True"):
        list(hr.ZMQStreamer(hr.Streamer([{1, 2}])))
    assert list(hr.ZMQStreamer(hr.Streamer([{1, 2}]), allow_pickle=True)) == [{1, 2}]


def test_an_unpicklable_streamer_fails_in_the_caller() -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be sent to the background process"):
        hr.ZMQStreamer(hr.Streamer([lock])).iterate()


def test_closing_early_stops_the_background_process() -> None:
    it = iter(hr.ZMQStreamer(hr.Streamer(endless)))
    assert next(it)["X"][0] == 0
    it.close()  # the leak fixture checks that the process is gone


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="transport"):
        hr.ZMQStreamer([1], transport="udp")
    with pytest.raises(ValueError, match="prefetch must be >= 1"):
        hr.ZMQStreamer([1], prefetch=0)
    with pytest.raises(TypeError, match="Streamer or an iterable"):
        hr.ZMQStreamer(5)
