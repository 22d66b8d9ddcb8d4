"""Chunks keep per-item semantics: order, errors by item, take, rng, prompt slow sources.

The runner moves items in chunks whose sizes it picks by time; these tests force random chunk
schedules (sizes 1 to very large) on the source and on every stage, and compare with builtins.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headrace as hr
from headrace import _flow

SETTINGS = settings(max_examples=30, deadline=None)

ints = st.lists(st.integers(-1000, 1000), max_size=80)
sizes = st.lists(st.sampled_from([1, 2, 3, 5, 8, 64, 100_000]), min_size=1, max_size=6)


@contextlib.contextmanager
def chunk_schedule(source: list[int], stage: list[int]) -> Iterator[None]:
    """Chunks of the given sizes, in turn: ``source`` for what sources read, ``stage`` for
    what stages take from their input channels."""
    source_sizes = itertools.cycle(source)
    stage_sizes = itertools.cycle(stage)
    lock = threading.Lock()

    def limit(self: Any) -> int:
        with lock:
            return next(stage_sizes)

    def adapt(self: Any, items: int, elapsed: float, size: int) -> None:
        with lock:
            self._size = next(source_sizes)

    real_limit, real_adapt = _flow.Sizer.limit, _flow.SourceReader._adapt
    _flow.Sizer.limit = limit  # type: ignore[method-assign]
    _flow.SourceReader._adapt = adapt  # type: ignore[method-assign]
    try:
        yield
    finally:
        _flow.Sizer.limit = real_limit  # type: ignore[method-assign]
        _flow.SourceReader._adapt = real_adapt  # type: ignore[method-assign]


def f(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"bad {x}")
    return 3 * x - 1


def p(x: int) -> bool:
    return x % 3 != 0


def g(x: int) -> list[int]:
    return [x] * (abs(x) % 3)


def draw(x: int) -> tuple[int, float]:
    return x, float(hr.rng().random())


@SETTINGS
@given(xs=ints, source=sizes, stage=sizes, w=st.integers(1, 3))
def test_chunked_chain_equals_builtins(
    xs: list[int], source: list[int], stage: list[int], w: int
) -> None:
    s = (
        hr.from_iterable(xs)
        .map(f, workers=w, on_error="skip", name="f")
        .filter(p, workers=w)
        .flat_map(g, workers=w)
        .map(draw, workers=w)
    )
    with chunk_schedule(source, stage), s.open(seed=11) as run:
        got = list(run)
        report = run.report()
    ok = [x for x in xs if x % 7 != 3]
    wanted = [y for x in filter(p, map(f, ok)) for y in g(x)]
    assert [x for x, _ in got] == wanted
    assert sorted(e.index for e in report.errors) == [i for i, x in enumerate(xs) if x % 7 == 3]


@SETTINGS
@given(xs=ints, source=sizes, stage=sizes, w=st.integers(1, 3))
def test_rng_draws_do_not_depend_on_chunks_or_workers(
    xs: list[int], source: list[int], stage: list[int], w: int
) -> None:
    with chunk_schedule(source, stage):
        chunked = hr.from_iterable(xs).map(draw, workers=w).collect(seed=5)
    single = hr.from_iterable(xs).map(draw, workers=1).collect(seed=5)
    assert chunked == single


@SETTINGS
@given(xs=ints, source=sizes, stage=sizes, w=st.integers(1, 3))
def test_unordered_chunks_same_multiset(
    xs: list[int], source: list[int], stage: list[int], w: int
) -> None:
    with chunk_schedule(source, stage):
        out = hr.from_iterable(xs).map(abs, workers=w, ordered=False).collect()
    assert sorted(out) == sorted(map(abs, xs))


@pytest.mark.parametrize("backend", ["inline", "thread", "process"])
def test_an_error_in_the_kth_item_of_a_chunk_names_item_k(backend: str) -> None:
    def fail_at_13(x: int) -> int:
        if x == 13:
            raise KeyError(x)
        return x

    with chunk_schedule([50], [50]):
        s = hr.from_iterable(range(50)).map(fail_at_13, backend=backend, on_error="skip")
        with s.open() as run:
            out = list(run)
            report = run.report()
        assert out == [x for x in range(50) if x != 13]
        assert [(e.index, e.type) for e in report.errors] == [(13, "KeyError")]
        with pytest.raises(KeyError) as info:
            hr.from_iterable(range(50)).map(fail_at_13, backend=backend).collect()
    assert any("item 13" in note for note in getattr(info.value, "__notes__", []))


def test_take_pulls_at_most_n_plus_a_few_chunks() -> None:
    """take(n) reads ahead at most n (its input channel) plus the chunk that overflows it and
    the one in the source's hand."""
    pulled = 0

    def counting() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    with chunk_schedule([16], [16]):
        assert hr.from_iterable(counting()).take(10).collect() == list(range(10))
    assert pulled <= 10 + 2 * 16


@pytest.mark.parametrize("backend", ["inline", "thread", "process"])
def test_a_slow_source_delivers_each_item_as_it_comes(backend: str) -> None:
    """The source waits for the consumer to see an item before it yields the next: a runner
    that held an item back to fill a chunk would never finish."""
    seen = [threading.Event() for _ in range(30)]

    def source() -> Iterator[int]:
        for i in range(30):
            yield i
            if not seen[i].wait(20):
                raise AssertionError(f"item {i} never reached the consumer")

    got = []
    for x in hr.from_iterable(source()).map(abs, backend=backend):
        got.append(x)
        seen[x].set()
    assert got == list(range(30))


def test_arrays_above_the_threshold_cross_in_shared_memory_within_a_chunk() -> None:
    from headrace._shm import THRESHOLD

    arrays = [np.full(THRESHOLD // 8 * 2, i, dtype=np.float64) for i in range(6)]
    with chunk_schedule([6], [6]):
        out = hr.from_iterable(arrays).map(lambda a: a + 1, backend="process", workers=2).collect()
    for i, a in enumerate(out):
        assert (a == i + 1).all()
        assert not a.flags.owndata  # a view of a shared-memory slot, not a copy from a pipe
