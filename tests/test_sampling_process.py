"""hr.ProcessStreamer: a Streamer in a worker of headrace's own process backend."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import headrace as hr


def batches(n):
    for i in range(n):
        yield {"X": np.full((4, 3), i, dtype=np.float32), "i": i}


def endless():
    for i in itertools.count():
        yield {"X": np.full((64, 8), float(i))}


def fails_at(n):
    yield from range(n)
    raise KeyError(f"no item {n}")


def test_items_arrive_in_order_with_limits_and_cycles() -> None:
    p = hr.ProcessStreamer(hr.Streamer(batches, 6))
    got = list(p)
    assert [b["i"] for b in got] == list(range(6))
    assert got[2]["X"].dtype == np.float32 and (got[2]["X"] == 2).all()
    assert [b["i"] for b in p(max_items=3)] == [0, 1, 2]
    assert [b["i"] for b in p.cycle(max_items=8)] == [0, 1, 2, 3, 4, 5, 0, 1]


def test_a_lambda_streamer_and_a_seeded_mux() -> None:
    assert list(hr.ProcessStreamer(hr.Streamer(lambda: iter("abc")))) == ["a", "b", "c"]

    def mux():
        pool = [hr.Streamer(itertools.repeat, c) for c in "abcd"]
        return hr.StochasticMux(pool, 2, 5, random_state=42)

    a, b = hr.ProcessStreamer(mux()), hr.ProcessStreamer(mux())
    first = list(a(max_items=100))
    assert first == list(b(max_items=100))
    assert list(a(max_items=100)) != first  # each pass draws anew, reproducibly


def test_a_user_error_keeps_its_type() -> None:
    with pytest.raises(KeyError, match="no item 2"):
        list(hr.ProcessStreamer(hr.Streamer(fails_at, 2)))


def test_closing_early_stops_the_worker() -> None:
    it = iter(hr.ProcessStreamer(hr.Streamer(endless)))
    assert next(it)["X"][0, 0] == 0.0
    it.close()  # the leak fixture checks that no process or segment is left


def test_buffered_mux_in_the_background() -> None:
    rows = [hr.Streamer(itertools.repeat, {"X": np.ones((1, 2)) * k}) for k in range(3)]
    mux = hr.StochasticMux(rows, 2, 8, random_state=0)
    shapes = [b["X"].shape for b in hr.ProcessStreamer(mux.rebatch(16))(max_items=5)]
    assert shapes == [(16, 2)] * 5


def exits():
    yield 0
    raise SystemExit(3)


@pytest.mark.parametrize("kind", ["process", "zmq"])
def test_an_exit_in_the_background_is_a_worker_crash_for_both_streamers(kind: str) -> None:
    if kind == "zmq":
        pytest.importorskip("zmq")
        streamer: hr.Streamer = hr.ZMQStreamer(hr.Streamer(exits))
    else:
        streamer = hr.ProcessStreamer(hr.Streamer(exits))
    got = []
    with pytest.raises(hr.WorkerCrashedError, match=r"raised SystemExit\(3\) in the background"):
        for item in streamer:
            got.append(item)
    assert got in ([], [0])  # a failure may overtake the process stage's last outputs
