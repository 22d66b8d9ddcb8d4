"""Invalid graph shapes raise hr.GraphError when built or when the run starts, never a hang."""

from __future__ import annotations

from typing import Any

import pytest

import headrace as hr

pytestmark = pytest.mark.timeout(20)


def ok(x: Any) -> Any:
    return x


def keep(x: Any) -> bool:
    return True


def one(x: Any) -> list[Any]:
    return [x]


def passthrough(items: Any) -> Any:
    yield from items


def src() -> hr.Stream:
    return hr.from_iterable(range(10))


def test_graph_error_is_a_headrace_error() -> None:
    assert issubclass(hr.GraphError, hr.HeadraceError)


@pytest.mark.parametrize(
    "after",
    [
        lambda s: s.map(ok),
        lambda s: s.filter(keep),
        lambda s: s.flat_map(one),
        lambda s: s.transform(passthrough),
        lambda s: s.sink(ok),
        lambda s: s.batch(2),
        lambda s: s.rebatch(2),
        lambda s: s.unbatch(),
        lambda s: s.take(1),
        lambda s: s.prefetch(1),
        lambda s: s.route(lambda x: 0, 2),
        lambda s: hr.merge(s, src()),
        lambda s: hr.zip(s, src()),
    ],
    ids=[
        "map",
        "filter",
        "flat_map",
        "transform",
        "sink",
        "batch",
        "rebatch",
        "unbatch",
        "take",
        "prefetch",
        "route",
        "merge",
        "zip",
    ],
)
def test_stage_after_sink(after: Any) -> None:
    sink = src().map(ok).sink(ok)
    with pytest.raises(hr.GraphError):
        after(sink)


def zip_run(*streams: hr.Stream) -> list[Any]:
    """Build and run a zip: GraphError may come from either step."""
    return hr.zip(*streams).collect()


@pytest.mark.parametrize(
    "branch",
    [
        lambda s: s.filter(keep),
        lambda s: s.flat_map(one),
        lambda s: s.map(ok, on_error="skip"),
        lambda s: s.map(ok).filter(keep).map(ok),
        lambda s: s.route(lambda x: 0, 2)[0],
        lambda s: s.transform(passthrough),
        lambda s: s.batch(2),
    ],
    ids=["filter", "flat_map", "skip", "filter_inside_chain", "route_output", "transform", "batch"],
)
def test_zip_over_a_branch_that_is_not_one_to_one(branch: Any) -> None:
    s = src().map(ok)
    with pytest.raises(hr.GraphError):
        zip_run(s.map(ok), branch(s))


def test_zip_of_two_route_outputs() -> None:
    a, b = src().route(lambda x: [0, 1], 2)
    with pytest.raises(hr.GraphError):
        zip_run(a, b)


def test_zip_of_unrelated_sources() -> None:
    with pytest.raises(hr.GraphError):
        zip_run(hr.from_iterable(range(3)), hr.from_iterable(range(3)))


def test_zip_of_unrelated_chains() -> None:
    with pytest.raises(hr.GraphError):
        zip_run(hr.from_iterable(range(3)).map(ok), hr.from_iterable(range(3)).map(ok))


def test_zip_of_a_merge_and_its_input() -> None:
    s = src()
    with pytest.raises(hr.GraphError):
        zip_run(s, hr.merge(s.map(ok), hr.from_iterable(range(10))))


def test_valid_zip_positive_control() -> None:
    s = src()
    assert zip_run(s.map(ok), s.map(ok, retries=2), s) == [(x, x, x) for x in range(10)]


def test_cycle_is_a_graph_error() -> None:
    """The public API cannot build a cycle (streams are immutable); a cycle made by editing
    the private graph is still caught when the run starts, not run forever."""
    a = src().map(ok)
    b = a.map(ok)
    a._node.inputs = ((b._node, 0),)
    with pytest.raises(hr.GraphError, match="cycle"):
        b.collect()
