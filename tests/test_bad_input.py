"""Bad arguments fail when the stage is built, with a ValueError / TypeError naming them."""

from __future__ import annotations

import re
from typing import Any

import pytest

import headrace as hr

STAGES = ["map", "filter", "flat_map", "transform", "sink"]


def ok(x: Any) -> Any:
    return x


def src() -> hr.Stream:
    return hr.from_iterable(range(3))


def build(method: str, *args: Any, **kwargs: Any) -> Any:
    return getattr(src(), method)(*args, **kwargs)


@pytest.mark.parametrize("method", [*STAGES, "route"])
@pytest.mark.parametrize("fn", [42, "len", None])
def test_non_callable_fn(method: str, fn: Any) -> None:
    args = (fn, 2) if method == "route" else (fn,)
    with pytest.raises(TypeError) as info:
        build(method, *args)
    # The message names the argument: `pred` for filter, `fn` for the others.
    assert ("pred" if method == "filter" else "fn") in str(info.value)


@pytest.mark.parametrize("method", STAGES)
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": -2}, "workers"),
        ({"maxsize": 0}, "maxsize"),
        ({"maxsize": -1}, "maxsize"),
        ({"backend": "gpu"}, "backend"),
        ({"on_error": "ignore"}, "on_error"),
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.5}, "timeout"),
        ({"backend": "inline", "workers": 2}, "workers"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else v,
)
def test_bad_stage_option(method: str, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as info:
        build(method, ok, **options)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("options", "named"), [({"retries": 1}, "retries"), ({"timeout": 1.0}, "timeout")]
)
def test_transform_refuses_retries_and_timeout(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as info:
        src().transform(ok, **options)
    assert named in str(info.value)


@pytest.mark.parametrize("size", [0, -1])
def test_batch_size(size: int) -> None:
    with pytest.raises(ValueError) as info:
        src().batch(size)
    assert "size" in str(info.value)


@pytest.mark.parametrize("rows", [0, -4])
def test_rebatch_rows(rows: int) -> None:
    with pytest.raises(ValueError) as info:
        src().rebatch(rows)
    assert "rows" in str(info.value)


def test_take_n() -> None:
    with pytest.raises(ValueError) as info:
        src().take(-1)
    assert re.search(r"\bn\b", str(info.value)), str(info.value)


@pytest.mark.parametrize("n", [0, -1])
def test_route_n(n: int) -> None:
    with pytest.raises(ValueError) as info:
        src().route(lambda x: 0, n)
    assert re.search(r"\bn\b", str(info.value)), str(info.value)


@pytest.mark.parametrize("combine", [hr.merge, hr.zip])
def test_merge_zip_need_streams(combine: Any) -> None:
    with pytest.raises(ValueError):
        combine()


@pytest.mark.parametrize("combine", [hr.merge, hr.zip])
@pytest.mark.parametrize("other", [[1, 2, 3], range(3), "stream", None])
def test_merge_zip_refuse_non_streams(combine: Any, other: Any) -> None:
    with pytest.raises(TypeError):
        combine(src(), other)


def test_valid_options_build() -> None:
    """Positive control: the boundary values just inside the limits are accepted."""
    s = src()
    s.map(ok, workers=1, maxsize=1, retries=0, timeout=0.5, on_error="skip", backend="inline")
    s.map(ok, workers=4, backend="thread", ordered=False, name="fine")
    s.transform(ok, workers=2, retries=0, timeout=None)
    s.batch(1)
    s.rebatch(1)
    s.take(0)
    s.route(lambda x: 0, 1)


def test_stage_options_are_read_only_values_that_cross_to_workers_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the frozen dataclass gave, kept by the plain class: read-only, equal by value,
    hashable, and pickled without being checked again (a worker may have other limits)."""
    import pickle

    from headrace._stages import STAGE_OPTIONS, StageOptions

    options = StageOptions(workers=2, backend="process", name="decode", timeout=1.5)
    with pytest.raises(AttributeError, match="read-only"):
        options.workers = 3  # type: ignore[misc]
    assert options == StageOptions(workers=2, backend="process", name="decode", timeout=1.5)
    assert options != StageOptions(workers=2, backend="process", name="decode")
    assert hash(options) == hash(
        StageOptions(workers=2, backend="process", name="decode", timeout=1.5)
    )
    data = pickle.dumps(options)

    def refuse(self: StageOptions) -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr(StageOptions, "_check", refuse)
    back = pickle.loads(data)
    assert back == options and back.timeout == 1.5 and back.capacity == options.capacity
    assert repr(options).startswith("StageOptions(workers=2, backend='process'")
    assert [name for name in STAGE_OPTIONS if getattr(options, name) is None] == ["maxsize"]
