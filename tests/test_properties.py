"""Property tests: pipelines agree with the builtins on random inputs and worker counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import headrace as hr

SETTINGS = settings(max_examples=25, deadline=None)

ints = st.lists(st.integers(-1000, 1000), max_size=60)
workers = st.integers(1, 4)
maxsizes = st.one_of(st.none(), st.integers(1, 4))


def f(x: int) -> int:
    return 3 * x - 1


def p(x: int) -> bool:
    return x % 3 != 0


def g(x: int) -> list[int]:
    return [x] * (abs(x) % 3)


@SETTINGS
@given(xs=ints, w=workers, maxsize=maxsizes)
def test_ordered_map_equals_builtin(xs: list[int], w: int, maxsize: int | None) -> None:
    assert hr.from_iterable(xs).map(f, workers=w, maxsize=maxsize).collect() == list(map(f, xs))


@SETTINGS
@given(xs=ints, w=workers)
def test_ordered_filter_equals_builtin(xs: list[int], w: int) -> None:
    assert hr.from_iterable(xs).filter(p, workers=w).collect() == list(filter(p, xs))


@SETTINGS
@given(xs=ints, w1=workers, w2=workers)
def test_ordered_chain_equals_builtins(xs: list[int], w1: int, w2: int) -> None:
    s = hr.from_iterable(xs).map(f, workers=w1).filter(p, workers=w2).flat_map(g, workers=w1)
    assert s.collect() == [y for x in filter(p, map(f, xs)) for y in g(x)]


@SETTINGS
@given(xs=ints, w=workers)
def test_unordered_map_same_multiset(xs: list[int], w: int) -> None:
    out = hr.from_iterable(xs).map(f, workers=w, ordered=False).collect()
    assert Counter(out) == Counter(map(f, xs))


@SETTINGS
@given(xs=ints, w=workers)
def test_unordered_filter_same_multiset(xs: list[int], w: int) -> None:
    out = hr.from_iterable(xs).filter(p, workers=w, ordered=False).collect()
    assert Counter(out) == Counter(filter(p, xs))


@SETTINGS
@given(
    rows=st.lists(st.lists(st.integers(-50, 50), min_size=3, max_size=3), max_size=30),
    size=st.integers(1, 8),
    w=workers,
)
def test_batch_then_unbatch_is_identity(rows: list[list[int]], size: int, w: int) -> None:
    arrays = [np.array(r, dtype=np.int32) for r in rows]
    batches = hr.from_iterable(arrays).map(lambda a: a, workers=w).batch(size).collect()
    assert [len(b) for b in batches] == [
        min(size, len(arrays) - i) for i in range(0, len(arrays), size)
    ]
    out = hr.from_iterable(arrays).map(lambda a: a, workers=w).batch(size).unbatch().collect()
    assert len(out) == len(arrays)
    for a, b in zip(arrays, out, strict=True):
        np.testing.assert_array_equal(a, b)


@SETTINGS
@given(xs=ints, size=st.integers(1, 8))
def test_batch_of_ints_then_unbatch_is_identity(xs: list[int], size: int) -> None:
    assert hr.from_iterable(xs).batch(size).unbatch().collect() == xs


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 9), max_size=12), rows=st.integers(1, 7), drop_last=st.booleans()
)
def test_rebatch_exact_rows(sizes: list[int], rows: int, drop_last: bool) -> None:
    total = sum(sizes)
    data = np.arange(total * 2).reshape(total, 2)
    chunks = np.split(data, np.cumsum(sizes)[:-1]) if sizes else []
    out = hr.from_iterable(chunks).rebatch(rows, drop_last=drop_last).collect()
    full, rest = divmod(total, rows)
    expected_sizes = [rows] * full + ([rest] if rest and not drop_last else [])
    assert [len(b) for b in out] == expected_sizes
    kept = sum(expected_sizes)
    got = np.concatenate(out) if out else np.empty((0, 2), dtype=data.dtype)
    np.testing.assert_array_equal(got, data[:kept])
