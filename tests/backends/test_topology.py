"""Graph shapes on every backend: broadcast, route, merge, zip, diamonds, several sinks."""

from __future__ import annotations

from collections import Counter
from typing import Any

import headrace as hr

N = 30


def double(x: int) -> int:
    return 2 * x


def negate(x: int) -> int:
    return -x


def inc(x: int) -> int:
    return x + 1


def identity(x: Any) -> Any:
    return x


def parity(x: int) -> int:
    return x % 2


def tag_a(x: Any) -> tuple[str, Any]:
    return ("a", x)


def tag_b(x: Any) -> tuple[str, Any]:
    return ("b", x)


def by_three(x: int) -> Any:
    """Multiples of 3 go to both branches, x % 3 == 1 to branch 1, the rest are dropped."""
    if x % 3 == 0:
        return [0, 1]
    if x % 3 == 1:
        return 1
    return None


def of_tag(out: list[tuple[str, Any]], tag: str) -> list[Any]:
    return [x for t, x in out if t == tag]


# --- broadcast -----------------------------------------------------------------------------


def test_broadcast_to_two_sinks(opts: dict[str, Any]) -> None:
    a: list[int] = []  # the sinks run on threads
    b: list[int] = []
    s = hr.from_iterable(range(N)).map(identity, **opts)
    report = hr.run(s.map(double, **opts).sink(a.append), s.map(negate, **opts).sink(b.append))
    assert isinstance(report, hr.Report)
    assert a == [2 * x for x in range(N)]
    assert b == [-x for x in range(N)]


def test_broadcast_three_branches_merged(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N)).map(identity, **opts)
    out = hr.merge(
        s.map(tag_a, **opts), s.map(tag_b, **opts), s.map(negate, **opts).map(tag_a, **opts)
    ).collect()
    assert len(out) == 3 * N
    assert Counter(of_tag(out, "a")) == Counter(list(range(N)) + [-x for x in range(N)])
    assert of_tag(out, "b") == list(range(N))


def test_run_of_one_branch_of_a_broadcast(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N)).map(identity, **opts)
    a = s.map(double, **opts)
    _unused = s.map(negate, **opts)
    assert a.collect() == [2 * x for x in range(N)]


def test_hr_run_with_plain_streams_discards_items(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N))
    report = hr.run(s.map(double, **opts, name="left"), s.map(negate, **opts, name="right"))
    assert report.stage("left").items_out == N
    assert report.stage("right").items_out == N
    assert report.stage("source").items_in == N


# --- route ---------------------------------------------------------------------------------


def test_route_single_index(opts: dict[str, Any]) -> None:
    even, odd = hr.from_iterable(range(N)).map(identity, **opts).route(parity, 2)
    out = hr.merge(even.map(tag_a, **opts), odd.map(tag_b, **opts)).collect()
    assert of_tag(out, "a") == list(range(0, N, 2))
    assert of_tag(out, "b") == list(range(1, N, 2))
    assert len(out) == N


def test_route_multi_index_and_none(opts: dict[str, Any]) -> None:
    zero: list[int] = []  # the sinks run on threads
    one: list[int] = []
    b0, b1 = hr.from_iterable(range(N)).route(by_three, 2)
    report = hr.run(
        b0.map(identity, **opts).sink(zero.append), b1.map(identity, **opts).sink(one.append)
    )
    assert zero == [x for x in range(N) if x % 3 == 0]
    assert one == [x for x in range(N) if x % 3 in (0, 1)]
    assert report.stage("by_three").dropped == len([x for x in range(N) if x % 3 == 2])


def test_route_returns_n_streams(opts: dict[str, Any]) -> None:
    branches = hr.from_iterable(range(N)).map(identity, **opts).route(lambda x: x % 3, 3)
    assert isinstance(branches, tuple) and len(branches) == 3
    assert all(isinstance(b, hr.Stream) for b in branches)
    out = hr.merge(*(b.map(identity, **opts) for b in branches)).collect()
    assert Counter(out) == Counter(range(N))


def test_merge_after_route_keeps_each_branch_order(opts: dict[str, Any]) -> None:
    low, high = hr.from_iterable(range(N)).route(lambda x: int(x >= N // 2), 2)
    out = hr.merge(low.map(tag_a, **opts), high.map(double, **opts).map(tag_b, **opts)).collect()
    assert of_tag(out, "a") == list(range(N // 2))
    assert of_tag(out, "b") == [2 * x for x in range(N // 2, N)]


# --- merge ---------------------------------------------------------------------------------


def test_merge_two_sources(opts: dict[str, Any]) -> None:
    a = hr.from_iterable(range(20)).map(tag_a, **opts)
    b = hr.from_iterable(range(100, 125)).map(tag_b, **opts)
    out = hr.merge(a, b).collect()
    assert len(out) == 45
    assert of_tag(out, "a") == list(range(20))
    assert of_tag(out, "b") == list(range(100, 125))


def test_merge_with_an_empty_source(opts: dict[str, Any]) -> None:
    a = hr.from_iterable([]).map(tag_a, **opts)
    b = hr.from_iterable(range(5)).map(tag_b, **opts)
    assert hr.merge(a, b).collect() == [("b", i) for i in range(5)]


def test_merge_of_one_stream(opts: dict[str, Any]) -> None:
    assert hr.merge(hr.from_iterable(range(5)).map(double, **opts)).collect() == [0, 2, 4, 6, 8]


def test_merge_unordered_branches(opts: dict[str, Any]) -> None:
    a = hr.from_iterable(range(20)).map(identity, **opts, ordered=False)
    b = hr.from_iterable(range(20, 40)).map(identity, **opts, ordered=False)
    assert Counter(hr.merge(a, b).collect()) == Counter(range(40))


# --- zip -----------------------------------------------------------------------------------


def test_zip(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N))
    out = hr.zip(s.map(double, **opts), s.map(negate, **opts)).collect()
    assert out == [(2 * x, -x) for x in range(N)]


def test_zip_with_the_stream_itself(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N)).map(identity, **opts)
    out = hr.zip(s, s.map(double, **opts)).collect()
    assert out == [(x, 2 * x) for x in range(N)]


def test_zip_aligns_unordered_branches(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N))
    out = hr.zip(
        s.map(double, **opts, ordered=False), s.map(negate, **opts, ordered=False)
    ).collect()
    assert sorted(out) == [(2 * x, -x) for x in range(N)]


def test_zip_of_three_chains(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N))
    out = hr.zip(s, s.map(double, **opts).map(inc, **opts), s.map(str, **opts)).collect()
    assert out == [(x, 2 * x + 1, str(x)) for x in range(N)]


def test_zip_of_three_branches_repeated(opts: dict[str, Any]) -> None:
    """Three branches of one broadcast, joined again; repeated because a lost wake-up between
    the branches shows only in some interleavings."""
    one = {**opts, "workers": 1}
    for _ in range(25):
        s = hr.from_iterable(range(10))
        out = hr.zip(s.map(double, **one), s.map(negate, **opts), s.map(inc, **one)).collect()
        assert out == [(2 * x, -x, x + 1) for x in range(10)]


def test_diamond_broadcast_then_zip(opts: dict[str, Any]) -> None:
    a = hr.from_iterable(range(N)).map(double, **opts)
    out = hr.zip(a.map(inc, **opts), a.map(negate, **opts)).map(sum, **opts).collect()
    assert out == [2 * x + 1 - 2 * x for x in range(N)]


def test_zip_of_empty_source(opts: dict[str, Any]) -> None:
    s = hr.from_iterable([])
    assert hr.zip(s.map(double, **opts), s.map(negate, **opts)).collect() == []


# --- several terminals ---------------------------------------------------------------------


def test_two_sink_system_with_route(opts: dict[str, Any], recorder: Any) -> None:
    store_even, store_odd = recorder(), recorder()
    even, odd = hr.from_iterable(range(N)).map(double, **opts).route(lambda x: x % 4 // 2, 2)
    report = hr.run(even.sink(store_even, **opts), odd.sink(store_odd, **opts))
    assert sorted(store_even.items()) == [2 * x for x in range(N) if x % 2 == 0]
    assert sorted(store_odd.items()) == [2 * x for x in range(N) if x % 2 == 1]
    assert report.stage("source").items_in == N
