"""Every stage kind, on every backend: map, filter, flat_map, transform, sink, batch,
rebatch, unbatch, take, prefetch, class callables, ordering, nested pipelines."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace._flow import MAX_CHUNK
from headrace._stages import AUTO_ITEMS

N = 40


def square(x: int) -> int:
    return x * x


def double(x: int) -> int:
    return 2 * x


def identity(x: Any) -> Any:
    return x


def is_even(x: int) -> bool:
    return x % 2 == 0


def repeat_n(x: int) -> list[int]:
    """x copies of x (0 gives an empty iterable)."""
    return [x] * (x % 4)


def slow_low(x: int) -> int:
    # Low indexes take longer, so with several workers later items finish first.
    if x < 4:
        time.sleep(0.02 * (4 - x))
    return x


def running_sum(items: Any) -> Any:
    total = 0
    for x in items:
        total += x
        yield total


END = "end-of-substream"


def doubled_with_end(items: Any) -> Any:
    for x in items:
        yield x
        yield x
    yield END


def pairs(items: Any) -> Any:
    """n -> n // 2: consecutive pairs of its sub-stream."""
    it = iter(items)
    for a in it:
        for b in it:
            yield (a, b)
            break


def workers_of(opts: dict[str, Any]) -> int:
    return int(opts.get("workers", 1))


# --- map -----------------------------------------------------------------------------------


def test_map(opts: dict[str, Any]) -> None:
    assert hr.from_iterable(range(N)).map(square, **opts).collect() == [x * x for x in range(N)]


def test_map_lambda(opts: dict[str, Any]) -> None:
    assert hr.from_iterable(range(N)).map(lambda x: x + 1, **opts).collect() == list(
        range(1, N + 1)
    )


def test_map_arrays(opts: dict[str, Any]) -> None:
    arrays = [np.full((3, 2), i, dtype=np.float32) for i in range(10)]
    out = hr.from_iterable(arrays).map(double, **opts).collect()
    assert len(out) == 10
    for i, a in enumerate(out):
        assert a.dtype == np.float32 and a.shape == (3, 2)
        np.testing.assert_array_equal(a, 2 * i)


def test_chained_maps(opts: dict[str, Any]) -> None:
    out = (
        hr.from_iterable(range(N))
        .map(double, **opts)
        .map(square, **opts)
        .map(str, **opts)
        .collect()
    )
    assert out == [str((2 * x) ** 2) for x in range(N)]


def test_ordered_when_later_items_finish_first(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(12)).map(slow_low, **opts).collect()
    assert out == list(range(12))


def test_ordered_with_forced_completion_order(
    opts: dict[str, Any], needs_shared_state: None
) -> None:
    """Item 0 finishes only after item 2 has finished; the output is still in input order."""
    if workers_of(opts) < 3:
        pytest.skip("needs 3 items in flight at once")
    finished: list[int] = []
    lock = threading.Lock()
    two_done = threading.Event()

    def fn(x: int) -> int:
        if x == 0 and not two_done.wait(10):
            raise AssertionError("item 2 never finished while item 0 was in flight")
        with lock:
            finished.append(x)
        if x == 2:
            two_done.set()
        return x

    out = hr.from_iterable(range(9)).map(fn, **opts).collect()
    assert out == list(range(9))
    assert finished.index(2) < finished.index(0)


def test_unordered_same_multiset(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(N)).map(slow_low, **opts, ordered=False).collect()
    assert Counter(out) == Counter(range(N))


def test_unordered_yields_in_completion_order(
    opts: dict[str, Any], needs_shared_state: None
) -> None:
    """With ordered=False item 2 reaches the consumer while item 0 is still running."""
    if workers_of(opts) < 3:
        pytest.skip("needs 3 items in flight at once")
    consumer_saw_two = threading.Event()

    def fn(x: int) -> int:
        if x == 0 and not consumer_saw_two.wait(10):
            raise AssertionError("item 2 was held back behind item 0")
        return x

    out = []
    for x in hr.from_iterable(range(6)).map(fn, **opts, ordered=False):
        out.append(x)
        if x == 2:
            consumer_saw_two.set()
    assert Counter(out) == Counter(range(6))
    assert out.index(2) < out.index(0)


def test_maxsize_one(opts: dict[str, Any]) -> None:
    out = (
        hr.from_iterable(range(N))
        .map(double, **opts, maxsize=1)
        .map(double, **opts, maxsize=1)
        .collect()
    )
    assert out == [4 * x for x in range(N)]


# --- filter, flat_map ------------------------------------------------------------------------


def test_filter(opts: dict[str, Any]) -> None:
    assert hr.from_iterable(range(N)).filter(is_even, **opts).collect() == list(range(0, N, 2))


def test_filter_unordered(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(N)).filter(is_even, **opts, ordered=False).collect()
    assert Counter(out) == Counter(range(0, N, 2))


def test_filter_rejecting_everything(opts: dict[str, Any]) -> None:
    assert hr.from_iterable(range(N)).filter(lambda x: False, **opts).collect() == []


def test_flat_map(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(N)).flat_map(repeat_n, **opts).collect()
    assert out == [y for x in range(N) for y in repeat_n(x)]


def test_flat_map_generator(opts: dict[str, Any]) -> None:
    def gen(x: int) -> Any:
        yield from range(x % 3)

    out = hr.from_iterable(range(N)).flat_map(gen, **opts).collect()
    assert out == [y for x in range(N) for y in range(x % 3)]


def test_flat_map_unordered(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(N)).flat_map(repeat_n, **opts, ordered=False).collect()
    assert Counter(out) == Counter(y for x in range(N) for y in repeat_n(x))


# --- transform -----------------------------------------------------------------------------


def test_transform_one_worker_keeps_order(opts: dict[str, Any]) -> None:
    one = {**opts, "workers": 1}
    out = hr.from_iterable(range(N)).transform(running_sum, **one).collect()
    assert out == list(itertools.accumulate(range(N)))


def test_transform_n_to_m_one_worker(opts: dict[str, Any]) -> None:
    one = {**opts, "workers": 1}
    out = hr.from_iterable(range(9)).transform(pairs, **one).collect()
    assert out == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_transform_each_worker_runs_its_own_fn(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(N)).transform(doubled_with_end, **opts).collect()
    ends = out.count(END)
    assert 1 <= ends <= workers_of(opts)
    assert Counter(x for x in out if x != END) == Counter(2 * list(range(N)))


# --- sink ----------------------------------------------------------------------------------


def test_sink(opts: dict[str, Any], recorder: Any) -> None:
    seen = recorder()
    sink = hr.from_iterable(range(N)).map(double, **opts).sink(seen, **opts)
    report = hr.run(sink)
    assert isinstance(report, hr.Report)
    assert Counter(seen.items()) == Counter(2 * x for x in range(N))


def test_iterating_a_sink_yields_nothing(opts: dict[str, Any]) -> None:
    seen: list[int] = []  # the sink runs on threads here
    sink = hr.from_iterable(range(N)).map(double, **opts).sink(seen.append)
    assert list(sink) == []
    assert seen == [2 * x for x in range(N)]


def test_sink_run_returns_report(opts: dict[str, Any], recorder: Any) -> None:
    seen = recorder()
    report = hr.from_iterable(range(N)).sink(seen, **{**opts, "workers": 1}, name="store").run()
    assert report.stage("store").items_in == N
    assert sorted(seen.items()) == list(range(N))


# --- batch ---------------------------------------------------------------------------------


def test_batch_ints_to_lists(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(10)).map(identity, **opts).batch(4).collect()
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batch_drop_last(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(10)).map(identity, **opts).batch(4, drop_last=True).collect()
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batch_exact_multiple(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(8)).map(identity, **opts).batch(4, drop_last=True).collect()
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batch_stacks_arrays(opts: dict[str, Any]) -> None:
    arrays = [np.full((2, 3), i, dtype=np.int16) for i in range(5)]
    out = hr.from_iterable(arrays).map(identity, **opts).batch(2).collect()
    assert [b.shape for b in out] == [(2, 2, 3), (2, 2, 3), (1, 2, 3)]
    assert all(isinstance(b, np.ndarray) and b.dtype == np.int16 for b in out)
    np.testing.assert_array_equal(np.concatenate(out), np.stack(arrays))


def test_batch_stacks_numpy_scalars(opts: dict[str, Any]) -> None:
    items = [np.float64(i) / 2 for i in range(6)]
    out = hr.from_iterable(items).map(identity, **opts).batch(3).collect()
    assert len(out) == 2
    for b in out:
        assert isinstance(b, np.ndarray) and b.shape == (3,) and b.dtype == np.float64
    np.testing.assert_array_equal(np.concatenate(out), np.arange(6) / 2)


def test_batch_dicts_of_arrays(opts: dict[str, Any]) -> None:
    items = [{"x": np.full(3, i), "y": np.int64(i)} for i in range(5)]
    out = hr.from_iterable(items).map(identity, **opts).batch(2).collect()
    assert len(out) == 3
    assert all(set(b) == {"x", "y"} for b in out)
    assert [b["x"].shape for b in out] == [(2, 3), (2, 3), (1, 3)]
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in out]), np.arange(5))
    np.testing.assert_array_equal(out[1]["x"], [[2, 2, 2], [3, 3, 3]])


def test_batch_tuples_of_arrays(opts: dict[str, Any]) -> None:
    items = [(np.full(2, i), np.full(1, -i)) for i in range(4)]
    out = hr.from_iterable(items).map(identity, **opts).batch(3).collect()
    assert len(out) == 2
    assert all(isinstance(b, tuple) and len(b) == 2 for b in out)
    assert out[0][0].shape == (3, 2) and out[0][1].shape == (3, 1)
    np.testing.assert_array_equal(out[1][0], [[3, 3]])
    np.testing.assert_array_equal(out[1][1], [[-3]])


def test_batch_collate_none_gives_lists(opts: dict[str, Any]) -> None:
    arrays = [np.full(2, i) for i in range(3)]
    out = hr.from_iterable(arrays).map(identity, **opts).batch(2, collate=None).collect()
    assert [type(b) for b in out] == [list, list]
    assert [len(b) for b in out] == [2, 1]
    np.testing.assert_array_equal(out[1][0], [2, 2])


def test_batch_collate_callable(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(7)).map(identity, **opts).batch(3, collate=sum).collect()
    assert out == [0 + 1 + 2, 3 + 4 + 5, 6]


def test_batch_of_empty_source(opts: dict[str, Any]) -> None:
    assert hr.from_iterable([]).map(identity, **opts).batch(3).collect() == []


# --- rebatch, unbatch ----------------------------------------------------------------------


def test_rebatch_arrays(opts: dict[str, Any]) -> None:
    sizes = [3, 5, 2, 7, 1]
    rows = np.arange(sum(sizes) * 2).reshape(-1, 2)
    chunks = np.split(rows, np.cumsum(sizes)[:-1])
    out = hr.from_iterable(chunks).map(identity, **opts).rebatch(4).collect()
    assert [len(b) for b in out] == [4, 4, 4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(out), rows)


def test_rebatch_drop_last(opts: dict[str, Any]) -> None:
    chunks = [np.arange(5), np.arange(5, 11)]
    out = hr.from_iterable(chunks).map(identity, **opts).rebatch(4, drop_last=True).collect()
    assert [len(b) for b in out] == [4, 4]
    np.testing.assert_array_equal(np.concatenate(out), np.arange(8))


def test_rebatch_dict_of_arrays(opts: dict[str, Any]) -> None:
    chunks = [
        {"a": np.arange(n0, n1), "b": np.arange(n0, n1) * 10} for n0, n1 in [(0, 3), (3, 4), (4, 9)]
    ]
    out = hr.from_iterable(chunks).map(identity, **opts).rebatch(2).collect()
    assert [len(b["a"]) for b in out] == [2, 2, 2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["a"] for b in out]), np.arange(9))
    np.testing.assert_array_equal(np.concatenate([b["b"] for b in out]), np.arange(9) * 10)


def test_unbatch_arrays(opts: dict[str, Any]) -> None:
    batches = [np.arange(6).reshape(3, 2), np.arange(6, 8).reshape(1, 2)]
    out = hr.from_iterable(batches).map(identity, **opts).unbatch().collect()
    assert len(out) == 4
    for i, row in enumerate(out):
        np.testing.assert_array_equal(row, [2 * i, 2 * i + 1])


def test_unbatch_dicts_tuples_lists(opts: dict[str, Any]) -> None:
    dicts = (
        hr.from_iterable([{"a": np.arange(3), "b": np.arange(3) * 2}])
        .map(identity, **opts)
        .unbatch()
        .collect()
    )
    assert [(int(d["a"]), int(d["b"])) for d in dicts] == [(0, 0), (1, 2), (2, 4)]
    tuples = (
        hr.from_iterable([(np.arange(2), np.arange(2) + 5)])
        .map(identity, **opts)
        .unbatch()
        .collect()
    )
    assert [(int(a), int(b)) for a, b in tuples] == [(0, 5), (1, 6)]
    lists = hr.from_iterable([[1, 2], [], [3]]).map(identity, **opts).unbatch().collect()
    assert lists == [1, 2, 3]


def test_batch_then_unbatch_is_identity(opts: dict[str, Any]) -> None:
    arrays = [np.full(3, i) for i in range(11)]
    out = hr.from_iterable(arrays).map(identity, **opts).batch(4).unbatch().collect()
    assert len(out) == 11
    for a, b in zip(arrays, out, strict=True):
        np.testing.assert_array_equal(a, b)


# --- take, prefetch ------------------------------------------------------------------------


def test_take(opts: dict[str, Any]) -> None:
    assert hr.from_iterable(range(100)).map(double, **opts).take(5).collect() == [0, 2, 4, 6, 8]


def test_take_more_than_source(opts: dict[str, Any]) -> None:
    assert hr.from_iterable(range(4)).map(double, **opts).take(100).collect() == [0, 2, 4, 6]


def test_take_zero(opts: dict[str, Any]) -> None:
    assert hr.from_iterable(range(4)).map(double, **opts).take(0).collect() == []


def test_take_on_infinite_source_stops_upstream(
    opts: dict[str, Any], needs_shared_state: None, wait_no_threads: Any
) -> None:
    pulled = 0

    def counting() -> Any:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    s = hr.from_iterable(counting()).map(double, **opts).map(double, **opts).take(7)
    with s.open() as run:
        out = list(run)
    assert out == [4 * i for i in range(7)]
    assert wait_no_threads() == []
    # Upstream may fill its channels before it learns to stop, never more (RELIABILITY §5):
    # each channel its capacity and one chunk, each worker a chunk in hand and one waiting.
    bound = 7 + sum(
        st.capacity + (2 * st.workers + 2) * min(st.capacity, MAX_CHUNK)
        if st.capacity != AUTO_ITEMS
        else st.capacity + (2 * st.workers + 2) * MAX_CHUNK
        for st in run.report().stages
    )
    assert pulled <= bound, f"the source was pulled {pulled} times for take(7)"


def test_take_on_itertools_count(opts: dict[str, Any], wait_no_threads: Any) -> None:
    out = hr.from_iterable(itertools.count()).map(square, **opts).take(3).collect()
    assert out == [0, 1, 4]
    assert wait_no_threads() == []


def test_prefetch(opts: dict[str, Any]) -> None:
    out = hr.from_iterable(range(N)).map(double, **opts).prefetch(5).collect()
    assert out == [2 * x for x in range(N)]


def test_prefetch_of_infinite_source_with_take(opts: dict[str, Any], wait_no_threads: Any) -> None:
    out = hr.from_iterable(itertools.count()).map(double, **opts).prefetch(8).take(3).collect()
    assert out == [0, 2, 4]
    assert wait_no_threads() == []


# --- class callables -----------------------------------------------------------------------


def test_class_is_instantiated_once_per_worker(
    opts: dict[str, Any], needs_shared_state: None
) -> None:
    workers = workers_of(opts)
    barrier = threading.Barrier(workers, timeout=10)
    lock = threading.Lock()

    class Model:
        instances = 0

        def __init__(self) -> None:
            with lock:
                type(self).instances += 1
            self.first = True
            self.offset = 100

        def __call__(self, x: int) -> int:
            if self.first:
                # Every worker holds an item at once, so every worker has made its instance.
                self.first = False
                barrier.wait()
            return x + self.offset

    out = hr.from_iterable(range(N)).map(Model, **opts).collect()
    assert out == [x + 100 for x in range(N)]
    assert Model.instances == workers


def test_class_as_filter(opts: dict[str, Any]) -> None:
    class Divisible:
        def __init__(self) -> None:
            self.k = 3

        def __call__(self, x: int) -> bool:
            return x % self.k == 0

    assert hr.from_iterable(range(N)).filter(Divisible, **opts).collect() == list(range(0, N, 3))


# --- sizes, nesting ------------------------------------------------------------------------


def test_empty_source(opts: dict[str, Any]) -> None:
    s = hr.from_iterable([]).map(double, **opts).filter(is_even, **opts).flat_map(repeat_n, **opts)
    assert s.collect() == []


def test_one_item(opts: dict[str, Any]) -> None:
    s = hr.from_iterable([3]).map(double, **opts).filter(is_even, **opts).flat_map(repeat_n, **opts)
    assert s.collect() == [6, 6]


def inner_sum(x: int) -> int:
    return sum(hr.from_iterable(range(x)).map(double, backend="thread", workers=2).collect())


def test_nested_pipeline(opts: dict[str, Any], wait_no_threads: Any) -> None:
    out = hr.from_iterable(range(8)).map(inner_sum, **opts).collect()
    assert out == [sum(2 * i for i in range(x)) for x in range(8)]
    assert wait_no_threads() == []
