"""hr.Streamer: restartable, picklable, bounded, cycled, buffered, as tuples (DESIGN §2.4)."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headrace as hr
from headrace._stages import _concat, _rows, _slice, rebatch_body


def count(n):
    yield from range(n)


def rows(n, width=2):
    for i in range(n):
        yield {"X": np.full((1, width), i), "Y": np.array([i])}


class Counter:
    """A picklable generator function that records how often it was called."""

    calls = 0

    def __call__(self, n):
        Counter.calls += 1
        yield from range(n)


def test_a_generator_function_restarts_on_every_iteration() -> None:
    Counter.calls = 0
    s = hr.Streamer(Counter(), 3)
    assert list(s) == [0, 1, 2]
    assert list(s) == [0, 1, 2]
    assert Counter.calls == 2


def test_an_iterable_is_iterated_afresh() -> None:
    s = hr.Streamer([1, 2, 3])
    assert list(s) == list(s) == [1, 2, 3]
    assert list(hr.Streamer(range(3))) == [0, 1, 2]


def test_kwargs_reach_the_function() -> None:
    def gen(a, *, b):
        yield a + b

    assert list(hr.Streamer(gen, 1, b=2)) == [3]


def test_max_items_and_call() -> None:
    s = hr.Streamer(count, 10)
    assert list(s.iterate(3)) == [0, 1, 2]
    assert list(s(max_items=4)) == [0, 1, 2, 3]
    assert list(s(0)) == []
    assert list(s(max_items=20)) == list(range(10))


def test_cycle_restarts_forever_or_up_to_max_items() -> None:
    s = hr.Streamer(count, 3)
    assert list(s.cycle(max_items=8)) == [0, 1, 2, 0, 1, 2, 0, 1]
    assert list(itertools.islice(s(cycle=True), 7)) == [0, 1, 2, 0, 1, 2, 0]


def test_cycle_of_an_empty_streamer_ends_instead_of_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert list(hr.Streamer([]).cycle()) == []
    assert "yielded nothing" in caplog.text


def test_streamer_of_a_streamer_and_nesting() -> None:
    inner = hr.Streamer(count, 2)
    assert list(hr.Streamer(inner)) == [0, 1]


def test_a_streamer_is_a_source_of_a_pipeline() -> None:
    s = hr.Streamer(count, 5)
    stream = hr.from_iterable(s).map(lambda x: x * 2, workers=2)
    assert stream.collect() == [0, 2, 4, 6, 8]
    assert stream.collect() == [0, 2, 4, 6, 8]  # re-iterable: runs again


def test_a_streamer_pickles_and_keeps_working() -> None:
    s = pickle.loads(pickle.dumps(hr.Streamer(count, 4)))
    assert list(s) == [0, 1, 2, 3]
    mux = hr.StochasticMux([hr.Streamer(count, 4)] * 3, 2, 3, random_state=5)
    clone = pickle.loads(pickle.dumps(mux))
    assert list(clone(max_items=50)) == list(mux(max_items=50))


def test_closing_early_closes_the_inner_generator() -> None:
    closed = []

    def gen():
        try:
            yield from itertools.count()
        finally:
            closed.append(True)

    it = hr.Streamer(gen).iterate(3)
    assert list(it) == [0, 1, 2]
    assert closed == [True]  # closed when the limit was reached, not at garbage collection
    it = iter(hr.Streamer(gen))
    next(it)
    it.close()
    assert closed == [True, True]


def test_tuples_pick_keys_in_order() -> None:
    s = hr.Streamer(rows, 3)
    got = list(s.tuples("Y", "X"))
    assert [int(y[0]) for y, _ in got] == [0, 1, 2]
    assert got[1][1].shape == (1, 2)
    assert len(list(s.tuples("X")(max_items=7, cycle=True))) == 7
    assert len(list(s.tuples("X").cycle(max_items=7))) == 7


def test_tuples_and_keras_tuples_are_streamers_like_batch() -> None:
    s = hr.Streamer([{"X": 1, "Y": 2}, {"X": 3, "Y": 4}])
    pairs = s.tuples("X", "Y")
    assert isinstance(pairs, hr.Streamer)
    assert list(pairs(max_items=1)) == [(1, 2)]
    assert list(pairs) == list(pairs) == [(1, 2), (3, 4)]  # restartable
    assert hr.from_iterable(pairs).collect() == [(1, 2), (3, 4)]
    keras = s.keras_tuples("X", ["Y"])
    assert isinstance(keras, hr.Streamer)
    assert list(keras(max_items=1)) == [(1, [2])]
    assert list(pickle.loads(pickle.dumps(pairs))) == [(1, 2), (3, 4)]


def test_keras_tuples() -> None:
    s = hr.Streamer(rows, 2)
    x, y = next(iter(s.keras_tuples("X", "Y")))
    assert x.shape == (1, 2) and y.shape == (1,)
    x, y = next(iter(s.keras_tuples(["X", "Y"], None)))
    assert isinstance(x, list) and len(x) == 2 and y is None


def test_rebatch_concatenates_rows_into_fixed_size_batches() -> None:
    s = hr.Streamer(rows, 10).rebatch(4)
    batches = list(s)
    assert [b["X"].shape for b in batches] == [(4, 2), (4, 2), (2, 2)]
    assert np.concatenate([b["Y"] for b in batches]).tolist() == list(range(10))
    assert [b["X"].shape[0] for b in hr.Streamer(rows, 10).rebatch(4, drop_last=True)] == [4, 4]


def test_rebatch_matches_the_pipeline_stage() -> None:
    """Streamer.rebatch and Stream.rebatch are the same operation, with and without threads."""
    sizes = [3, 1, 5, 2, 7]
    items = [{"X": np.arange(n * 2).reshape(n, 2) + 100 * i} for i, n in enumerate(sizes)]
    direct = list(hr.Streamer(items).rebatch(4))
    piped = hr.from_iterable(items).rebatch(4).collect()
    assert len(direct) == len(piped)
    for a, b in zip(direct, piped, strict=True):
        np.testing.assert_array_equal(a["X"], b["X"])


def test_batch_groups_items() -> None:
    batches = list(hr.Streamer(count, 5).batch(2))
    assert [b.tolist() if hasattr(b, "tolist") else b for b in batches] == [[0, 1], [2, 3], [4]]
    assert list(hr.Streamer(count, 5).batch(2, drop_last=True, collate=None)) == [[0, 1], [2, 3]]


def test_buffered_streamer_respects_max_items_in_batches() -> None:
    s = hr.Streamer(rows, 100).rebatch(8)
    assert len(list(s(max_items=3))) == 3


def test_nothing_runs_until_iterated() -> None:
    Counter.calls = 0
    s = hr.Streamer(Counter(), 3)
    it = s.iterate()
    assert Counter.calls == 0
    next(it)
    assert Counter.calls == 1
    it.close()


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), max_size=12),
    rows=st.integers(1, 7),
    drop_last=st.booleans(),
    as_dict=st.booleans(),
)
def test_rebatch_whole_gives_what_the_stage_body_gives(
    sizes: list[int], rows: int, drop_last: bool, as_dict: bool
) -> None:
    """The rebatch body's fast path (items kept whole when they fit) == slicing every item."""
    start = np.cumsum([0, *sizes])
    items = [np.arange(a, b) for a, b in itertools.pairwise(start)]
    if as_dict:
        items = [{"X": x, "Y": -x} for x in items]
    fast = list(rebatch_body(rows, drop_last)(iter(items)))
    slow = list(rebatch_by_slices(rows, drop_last, items))
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        if as_dict:
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(a, b)


def rebatch_by_slices(rows: int, drop_last: bool, batches: list[Any]) -> Iterator[Any]:
    """The reference: every input sliced into the batches being built."""
    parts: list[Any] = []
    held = 0
    for batch in batches:
        start, n = 0, _rows(batch)
        while start < n:
            take = min(rows - held, n - start)
            parts.append(_slice(batch, start, start + take))
            held += take
            start += take
            if held == rows:
                yield _concat(parts)
                parts, held = [], 0
    if parts and not drop_last:
        yield _concat(parts)
